"""The files a model lives in: checkpoints and the trainer's resumable state, safetensors + JSON (never pickle),
each file written aside, fsynced and renamed into place, so a crash never leaves half of one.

A checkpoint folder holds `config.json` (the model config), `model.safetensors` (every parameter; pruned
weights are exact zeros, so the weight masks are the nonzero pattern) and `tokenizer.json` (the model's
tokenizer, so a checkpoint is self-contained). The weights' metadata records the config and the tokenizer's
sha256 they were saved with, so loading refuses, by name, a config.json or tokenizer.json from another model
(checkpoints saved before the config was recorded are checked against their tokenizer hash only).

The trainer's state is a checkpoint plus `optimizer.safetensors`, `rng.safetensors` and `trainer_state.json`
(the step and the sha256 of every other file, written last), in `<run>/checkpoints/step-NNNNNNN/`. A new state
is complete on disk before an older one is deleted, so a complete state exists at every moment, and
`find_training_state` returns the newest complete one wherever a crash left it.

This module knows the model only through its constructor and `state_dict` (`load_model` takes the class), so
`circuitlab.model` can import it without a cycle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from circuitlab import settings
from circuitlab.config import SparseTransformerConfig

if TYPE_CHECKING:
    from circuitlab.model import SparseTransformer

Model = TypeVar("Model", bound="SparseTransformer")

FORMAT = "circuitlab.SparseTransformer"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"
COMPANION_FILE = "companion.safetensors"  # parameters trained beside the model (e.g. bridges), in a state
STATES_DIR = "checkpoints"  # <run>/checkpoints/step-NNNNNNN/
OLD_STATE_DIRS = ("checkpoint", "checkpoint.tmp")  # where earlier versions of the trainer kept its state


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt or belongs to another model; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------- atomic files


def fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to the disk (a folder: the names in it; Windows cannot open one)."""
    if os.name == "nt" and path.is_dir():
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write `path` by calling `write` on a temporary name beside it, fsync it, then rename it over `path`:
    a reader (or a crash) sees the old file or the new one, never a part of either."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    fsync(temporary)
    os.replace(temporary, path)
    fsync(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------- models


def config_json(cfg: SparseTransformerConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2) + "\n"


def read_config(path: Path) -> SparseTransformerConfig:
    """A model config from a JSON file; every problem is reported with the file's path."""
    return settings.build(SparseTransformerConfig, settings.read_mapping(path), source=str(path))


def save_model(model: SparseTransformer, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `model` to `directory`; refuses to replace an existing checkpoint unless `overwrite`. The weights
    are written last, so a crash between files leaves weights that refuse the new config by name."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{directory} already holds a checkpoint; pass overwrite=True to replace it or choose another folder."
        )
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    tokenizer_json = model.tokenizer.to_str()
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
    }
    write_text_atomic(directory / TOKENIZER_FILE, tokenizer_json)
    write_text_atomic(directory / CONFIG_FILE, config_json(model.cfg))
    write_atomic(directory / WEIGHTS_FILE, lambda path: save_file(state, path, metadata=metadata))
    return directory


def read_tensors(path: Path, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file and its metadata; a corrupt or truncated file is a CheckpointError that
    names it and says `fix`."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({err}); {fix}.") from err
    return state, metadata


def load_model(directory: str | Path, model_class: type[Model]) -> Model:
    """Load a checkpoint written by `save_model` as a `model_class`, after checking that its three files
    belong together and that every tensor is present, of the right shape and finite."""
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} is missing: {directory} is not a circuitlab checkpoint "
                f"(expected {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE})."
            )
    cfg = read_config(directory / CONFIG_FILE)
    weights = directory / WEIGHTS_FILE
    state, metadata = read_tensors(weights, "re-save or re-copy the checkpoint")
    tokenizer_json = (directory / TOKENIZER_FILE).read_text()
    check_same_origin(directory, cfg, tokenizer_json, metadata)
    model = model_class(cfg, tokenizer=Tokenizer.from_str(tokenizer_json))
    check_state_dict(model.state_dict(), state, source=str(weights))
    not_finite = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if not_finite:
        raise CheckpointError(
            f"{weights} holds NaN or inf values in {not_finite[:5]}: the run that saved it diverged. Load an "
            "earlier checkpoint, or retrain with a lower learning rate."
        )
    model.load_state_dict(state)
    return model


def check_same_origin(directory: Path, cfg: SparseTransformerConfig, tokenizer_json: str, metadata: dict) -> None:
    """Refuse a config.json or tokenizer.json that is not the one the weights were saved with."""
    weights = directory / WEIGHTS_FILE
    if "config" in metadata:
        changed = differences(json.loads(metadata["config"]), cfg.to_dict(), CONFIG_FILE)
        if changed:
            raise CheckpointError(
                f"{directory / CONFIG_FILE} does not belong to {weights}: the weights were saved with "
                f"{'; '.join(changed)}. Put back the config.json saved with these weights."
            )
    saved_hash = metadata.get("tokenizer_sha256")
    if saved_hash and hashlib.sha256(tokenizer_json.encode()).hexdigest() != saved_hash:
        raise CheckpointError(
            f"{directory / TOKENIZER_FILE} does not belong to {weights}: the weights were saved with another "
            f"tokenizer (sha256 {saved_hash[:16]}...). Put back the tokenizer.json saved with these weights."
        )


def differences(saved: dict[str, Any], now: dict[str, Any], now_label: str) -> list[str]:
    """`field=saved value where <now_label> has value` for every field whose value differs."""
    return [
        f"{name}={saved.get(name)!r} where {now_label} has {now.get(name)!r}"
        for name in sorted(set(saved) | set(now))
        if saved.get(name) != now.get(name)
    ]


def check_state_dict(expected: dict, found: dict, source: str) -> None:
    """Raise a CheckpointError listing missing, unexpected and mis-shaped tensors."""
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
        raise CheckpointError(
            f"{source} does not match its config.json ({', '.join(problems)}). The weights were saved from a "
            "model with a different configuration (e.g. attention sinks or the bigram table switched), or the "
            "config was edited."
        )


# --------------------------------------------------------------------------------------------- train state


def optimized_names(model: SparseTransformer, companion: torch.nn.Module | None) -> list[str]:
    """Names of the parameters in the optimizer's order: the model's, then the companion's as `companion.NAME`."""
    names = [name for name, _ in model.named_parameters()]
    return names + ([f"companion.{name}" for name, _ in companion.named_parameters()] if companion is not None else [])


def save_training_state(
    run_dir: Path,
    model: SparseTransformer,
    optimizer: torch.optim.Optimizer,
    step: int,
    companion: torch.nn.Module | None = None,
) -> Path:
    """Model, Adam state (keyed by parameter name), RNG state and step, written to a temporary folder, fsynced
    and renamed to `run_dir/checkpoints/step-NNNNNNN`; only then are older states deleted. A `companion` (the
    parameters an objective trains beside the model, optimized after the model's) goes to `COMPANION_FILE`."""
    final = run_dir / STATES_DIR / f"step-{step:07d}"
    temporary = final.with_name(final.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    save_model(model, temporary)
    if companion is not None:
        state = {name: tensor.detach().contiguous() for name, tensor in companion.state_dict().items()}
        write_atomic(temporary / COMPANION_FILE, lambda path: save_file(state, path))
    names = optimized_names(model, companion)
    moments = {
        f"{names[index]}/{key}": torch.as_tensor(value).detach().cpu().contiguous()
        for index, fields in optimizer.state_dict()["state"].items()
        for key, value in fields.items()
    }
    write_atomic(temporary / OPTIMIZER_FILE, lambda path: save_file(moments, path))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    write_atomic(temporary / RNG_FILE, lambda path: save_file(rng, path))
    manifest = {"step": step, "sha256": {path.name: sha256(path) for path in sorted(temporary.iterdir())}}
    write_text_atomic(temporary / STATE_FILE, json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)  # a state of the same step, from a run that was restarted
    os.replace(temporary, final)
    fsync(final.parent)
    for stale in state_dirs(run_dir):
        if stale != final:
            shutil.rmtree(stale)
    return final


def state_dirs(run_dir: Path) -> list[Path]:
    """Every folder of `run_dir` that may hold a training state, complete or not."""
    states = run_dir / STATES_DIR
    found = sorted(path for path in states.iterdir() if path.is_dir()) if states.is_dir() else []
    return found + [run_dir / name for name in OLD_STATE_DIRS if (run_dir / name).is_dir()]


def complete_step(directory: Path) -> int | None:
    """The step a state folder holds when every file its manifest lists is intact, else None. Manifests of
    earlier versions have no hashes; their folders count as complete when every file is there."""
    try:
        manifest = json.loads((directory / STATE_FILE).read_text())
        step = int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if "sha256" in manifest:
        intact = all(
            (directory / name).is_file() and sha256(directory / name) == digest
            for name, digest in manifest["sha256"].items()
        )
    else:
        required = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, OPTIMIZER_FILE)
        intact = all((directory / name).is_file() for name in required)
    return step if intact else None


def find_training_state(run_dir: Path) -> tuple[Path, int] | None:
    """The newest complete training state in `run_dir` and its step, or None if there is none."""
    complete = [(step, path) for path in state_dirs(run_dir) if (step := complete_step(path)) is not None]
    if not complete:
        return None
    step, path = max(complete)
    return path, step


def load_training_state(
    directory: Path,
    model: SparseTransformer,
    optimizer: torch.optim.Optimizer,
    companion: torch.nn.Module | None = None,
) -> int:
    """Restore a state written by `save_training_state` into `model`, `optimizer` (and `companion`, when the run
    trained one); returns its step."""
    saved = load_model(directory, type(model))
    changed = differences(saved.cfg.to_dict(), model.cfg.to_dict(), "this run")
    if changed:
        raise CheckpointError(
            f"{directory} was trained with another model config ({'; '.join(changed)}); resume with the config "
            "the run was started with."
        )
    model.load_state_dict(saved.state_dict())
    if companion is not None:
        if not (directory / COMPANION_FILE).is_file():
            raise CheckpointError(
                f"{directory / COMPANION_FILE} is missing: this state was saved by a run without an objective's own "
                "parameters (e.g. bridges); resume it with the command that started it."
            )
        found = load_file(directory / COMPANION_FILE)
        check_state_dict(companion.state_dict(), found, source=str(directory / COMPANION_FILE))
        companion.load_state_dict(found)
    index = {name: i for i, name in enumerate(optimized_names(model, companion))}
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(directory / OPTIMIZER_FILE).items():
        name, _, field = key.rpartition("/")
        moments.setdefault(index[name], {})[field] = value
    # load_state_dict moves the moments to each parameter's device and dtype
    optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
    if (directory / RNG_FILE).is_file():
        rng = load_file(directory / RNG_FILE)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return int(json.loads((directory / STATE_FILE).read_text())["step"])
