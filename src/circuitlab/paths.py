"""Where the project's files live: the repository, its shipped data, its figures and its caches."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # src/circuitlab/paths.py -> repository root
DATA_DIR = REPO_ROOT / "data"
FIGURES_DIR = REPO_ROOT / "figures"
CACHE_DIR = DATA_DIR / "cache"  # derived files (token streams), git-ignored
CHECKPOINTS_DIR = DATA_DIR / "checkpoints"
CIRCUITS_DIR = DATA_DIR / "circuits"
