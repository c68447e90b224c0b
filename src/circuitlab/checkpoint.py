"""Save and load `SparseTransformer` checkpoints as safetensors + JSON (never pickle).

A checkpoint folder holds `config.json` (the model config), `model.safetensors` (every parameter; pruned
weights are exact zeros, so the weight masks are the nonzero pattern) and `tokenizer.json` (a copy of the
model's tokenizer, so a checkpoint is self-contained). Loading validates everything and says what is wrong.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuitlab.config import SparseTransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def save_model(model, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `model` to `directory`; refuses to replace an existing checkpoint unless `overwrite`."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{directory} already holds a checkpoint; pass overwrite=True to replace it or choose another folder."
        )
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    tokenizer_json = model.tokenizer.to_str()
    metadata = {
        "format": "circuitlab.SparseTransformer",
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
    }
    save_file(state, directory / WEIGHTS_FILE, metadata=metadata)
    (directory / TOKENIZER_FILE).write_text(tokenizer_json)
    model.cfg.save(directory / CONFIG_FILE)
    return directory


def load_model(directory: str | Path):
    """Load a checkpoint written by `save_model`, checking every tensor's presence and shape."""
    from tokenizers import Tokenizer

    from circuitlab.model import SparseTransformer

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} is missing: {directory} is not a circuitlab checkpoint "
                f"(expected {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE})."
            )
    cfg = SparseTransformerConfig.load(directory / CONFIG_FILE)
    try:
        state = load_file(directory / WEIGHTS_FILE)
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} is corrupt or truncated ({err}); re-save or re-copy the checkpoint."
        ) from err

    tokenizer = None
    if (directory / TOKENIZER_FILE).is_file():
        tokenizer = Tokenizer.from_str((directory / TOKENIZER_FILE).read_text())
    model = SparseTransformer(cfg, tokenizer=tokenizer)
    check_state_dict(model.state_dict(), state, source=str(directory / WEIGHTS_FILE))
    model.load_state_dict(state)
    return model


def check_state_dict(expected: dict, found: dict, source: str) -> None:
    """Raise a ValueError listing missing, unexpected and mis-shaped tensors."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{name}: file {tuple(found[name].shape)} vs config {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(found))
        if found[name].shape != expected[name].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if mismatched:
        problems.append("shape mismatches " + "; ".join(mismatched))
    if problems:
        raise ValueError(
            f"{source} does not match its config.json ({', '.join(problems)}). The weights were saved from a "
            "model with a different configuration (e.g. attention sinks or the bigram table switched), or the "
            "config was edited."
        )
