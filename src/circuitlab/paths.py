"""Where the project's files live: the repository, its shipped data, its figures and its caches."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # src/circuitlab/paths.py -> repository root
DATA_DIR = REPO_ROOT / "data"
FIGURES_ENV = "CIRCUITLAB_FIGURES_DIR"  # set it to send figures elsewhere (smoke runs do, see handbook)
FIGURES_DIR = Path(os.environ.get(FIGURES_ENV, REPO_ROOT / "figures"))
CACHE_DIR = DATA_DIR / "cache"  # derived files (token streams), git-ignored
CHECKPOINTS_DIR = DATA_DIR / "checkpoints"
CIRCUITS_DIR = DATA_DIR / "circuits"
CONTROLS_DIR = DATA_DIR / "controls"  # the controls and the attribution baseline (make_controls)
