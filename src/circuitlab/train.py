"""Train a weight-sparse (or dense baseline) SparseTransformer with the paper's recipe.

    python -m circuitlab.train --config configs/sparse.yaml [--out DIR] [--resume] [--overwrite] [--set train.steps=100]
    torchrun --nproc_per_node=2 -m circuitlab.train --config configs/sparse.yaml     # DistributedDataParallel

Each step: next-token loss on a batch of real and synthetic Python, gradients rescaled to global RMS 1, Adam
(betas 0.9/0.95, eps 0.1), decoupled weight decay on the matrices, then every weight matrix projected onto
its top-k magnitudes with k annealed from dense (`circuitlab.sparsity`).

The output folder ends up as a loadable checkpoint (`SparseTransformer.from_pretrained(out_dir)`) that also
holds `metrics.csv`, `train_config.json`, the newest resumable state in `checkpoints/step-NNNNNNN/` (model,
Adam state, step and RNG; safetensors + JSON) and the marker `circuitlab-run.json`. Every file is written
aside and renamed into place (`circuitlab.checkpoint`), so a crash at any moment leaves a complete state and
the whole metrics history; `--resume` continues from the newest complete state and says which step that is.
`--overwrite` replaces only what the trainer wrote, and only in a folder that carries the marker. A loss or
gradient that turns NaN or inf stops the run before the weights take the step, keeping the last good state.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from circuitlab import checkpoint, settings
from circuitlab.checkpoint import CheckpointError, find_training_state, load_training_state, save_training_state
from circuitlab.config import SparseTransformerConfig
from circuitlab.corpus import TokenSampler, load_token_streams
from circuitlab.model import SparseTransformer
from circuitlab.settings import SettingsError
from circuitlab.sparsity import l0_schedule, lr_schedule, normalize_gradients_, project_topk_
from circuitlab.synthetic import MIXES

METRIC_FIELDS = (
    "step",
    "tokens",
    "train_loss",
    "val_loss",
    "l0",
    "nonzero_params",
    "dead_neurons",
    "lr",
    "tokens_per_s",
)
NO_DECAY_SUFFIXES = ("W_bigram", "sink_logits")  # and every vector: biases, norm weights
# The TrainConfig fields that decide the weights a run reaches; a resumed run must keep them.
TRAJECTORY_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "warmup_frac",
    "l0_start_frac",
    "l0_end_frac",
    "synthetic_fraction",
    "synthetic_mix",
    "repeat_fraction",
    "seed",
    "init_from",
)
VAL_SEED = 12345  # validation batches are the same for every run, so runs compare on the same text
RUN_MARKER = "circuitlab-run.json"  # in every run folder: --overwrite replaces only folders that carry it
METRICS_FILE = "metrics.csv"
TRAIN_CONFIG_FILE = "train_config.json"
RUN_FILES = (  # what the trainer writes into a run folder, and so what --overwrite may delete
    RUN_MARKER,
    METRICS_FILE,
    TRAIN_CONFIG_FILE,
    "ranks.json",
    checkpoint.CONFIG_FILE,
    checkpoint.WEIGHTS_FILE,
    checkpoint.TOKENIZER_FILE,
    checkpoint.STATES_DIR,
    *checkpoint.OLD_STATE_DIRS,
)


@dataclass
class TrainConfig:
    """Optimisation settings; the defaults are the paper's recipe at CPU scale (see configs/*.yaml).

    `lr` is the peak rate *after* the sharkfin factor: while the model is still dense the rate is
    lr * sqrt(weight_l0). The paper uses 1.28e-2 for 8-layer models trained on billions of tokens. The
    handbook's sparse model (configs/sparse.yaml) trains best at 2e-2 in 2500 steps of 4k tokens; its
    dense baseline uses 1e-2, since a dense run has no sharkfin damping and diverged at 2e-2.
    """

    steps: int = 1000
    batch_size: int = 32  # the global batch: split across processes under torchrun
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 0.1
    weight_decay: float = 0.1  # decoupled: w -= weight_decay * lr * w after each step, on matrices only
    warmup_frac: float = 0.01
    l0_start_frac: float = 0.01  # L0 stays 1 (dense) until this fraction of the steps...
    l0_end_frac: float = 0.5  # ...then falls linearly to the model's weight_l0 / embed_l0 by this one
    synthetic_fraction: float = 0.5  # share of batch rows drawn from synthetic task-rich snippets
    synthetic_mix: str = "templates"  # which synthetic stream (circuitlab.synthetic.MIXES): templates or python
    repeat_fraction: float = 0.0  # share of training rows whose second half repeats the first (corpus.TokenSampler)
    eval_every: int = 100  # steps between validation-loss and dead-neuron evaluations
    eval_batches: int = 4  # validation batches (of batch_size rows) per evaluation
    log_every: int = 10
    checkpoint_every: int = 200
    out_dir: str = "runs/model"
    resume: bool = False  # continue from out_dir/checkpoint
    overwrite: bool = False  # delete a non-empty out_dir first
    device: str = "cpu"  # "cpu" or "cuda"
    seed: int = 0  # batches are a pure function of (seed, step)
    init_from: str | None = None  # start from this checkpoint's weights (its config must be the model section)
    threads: int | None = None  # torch intra-op threads per process; None keeps torch's default

    def __post_init__(self) -> None:
        settings.coerce_fields(self)
        problems = []
        if not all(0 <= beta < 1 for beta in self.betas):
            problems.append(f"betas={self.betas!r} must each be in [0, 1)")
        if self.l0_start_frac > self.l0_end_frac:
            problems.append(
                f"l0_start_frac={self.l0_start_frac!r} must not exceed l0_end_frac={self.l0_end_frac!r} "
                "(the L0 anneal starts, then ends)"
            )
        if self.weight_decay * self.lr >= 1:
            problems.append(
                f"weight_decay * lr = {self.weight_decay * self.lr:g} must be below 1 (each step multiplies the "
                "matrices by 1 - weight_decay * lr)"
            )
        positive, fraction = settings.at_least(1), settings.between(0, 1)
        counts = ("steps", "batch_size", "eval_every", "eval_batches", "log_every", "checkpoint_every", "threads")
        settings.check(
            self,
            {
                **dict.fromkeys(counts, positive),
                "lr": settings.above(0),
                "eps": settings.above(0),
                "weight_decay": settings.at_least(0),
                **dict.fromkeys(
                    ("warmup_frac", "l0_start_frac", "l0_end_frac", "synthetic_fraction", "repeat_fraction"), fraction
                ),
                "device": settings.one_of(("cpu", "cuda")),
                "synthetic_mix": settings.one_of(tuple(MIXES)),
            },
            problems,
        )


CONFIG_SECTIONS = {"model": SparseTransformerConfig, "train": TrainConfig}


def load_sections(path: str | Path, sections: dict[str, type], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML file whose top-level keys are `sections` (name -> settings dataclass); `overrides` are
    "section.field=value" strings. Every value is checked (`circuitlab.settings`); a problem is reported with
    the file or the override. A section the file leaves out takes its defaults."""
    raw = settings.read_sections(path, list(sections), overrides)
    return {
        name: settings.build(cls, *settings.section_values(raw, name, cls, overrides, path))
        for name, cls in sections.items()
    }


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[SparseTransformerConfig, TrainConfig]:
    """Read a YAML file with `model:` and `train:` sections (`load_sections`)."""
    loaded = load_sections(path, CONFIG_SECTIONS, overrides)
    return loaded["model"], loaded["train"]


# ------------------------------------------------------------------------------------------ output folder


def prepare_out_dir(out_dir: Path, cfg: TrainConfig) -> None:
    """Make `out_dir` a run folder. A non-empty folder is refused unless resuming a run, or overwriting one that
    carries the run marker; overwriting deletes only the files the trainer writes."""
    entries = sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    is_run = (out_dir / RUN_MARKER).is_file()
    if entries and not cfg.resume:
        if not cfg.overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty. Pass --resume to continue that run, --overwrite to replace it, "
                "or choose another --out folder."
            )
        if not is_run:
            raise FileExistsError(
                f"{out_dir} was not written by circuitlab.train (it has no {RUN_MARKER}), so --overwrite leaves it "
                "alone. Choose another --out folder, or empty this one yourself."
            )
        for entry in entries:
            if entry.name.removeprefix(".").removesuffix(".tmp") in RUN_FILES:  # with files left mid-write
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    elif entries and not is_run and find_training_state(out_dir) is None:
        raise FileExistsError(
            f"{out_dir} holds no circuitlab run to resume (no {RUN_MARKER} and no checkpoint); choose another --out "
            "folder."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / RUN_MARKER).is_file():  # a new run, or one whose files (marker included) were just replaced
        checkpoint.write_text_atomic(out_dir / RUN_MARKER, json.dumps({"written_by": "circuitlab.train"}) + "\n")


def check_same_trajectory(saved_path: Path, cfg: TrainConfig) -> None:
    """A resumed run must use the settings its checkpoint was trained with, or it would silently diverge."""
    # tuples become lists, like the saved file
    now, defaults = (json.loads(json.dumps(dataclasses.asdict(c))) for c in (cfg, TrainConfig()))
    saved = defaults | settings.read_mapping(saved_path)  # a setting newer than the run: the run had its default
    changed = [f"{name}: {saved[name]!r} -> {now[name]!r}" for name in TRAJECTORY_FIELDS if saved[name] != now[name]]
    if changed:
        raise ValueError(
            f"Cannot resume {saved_path.parent}: these settings differ from the run's ({'; '.join(changed)}). "
            "Resume with the same settings, or start a new run in another folder."
        )


# ------------------------------------------------------------------------------------------------ metrics


@torch.no_grad()
def validation_metrics(model: SparseTransformer, sampler: TokenSampler, cfg: TrainConfig) -> tuple[float, float]:
    """Validation loss on fixed batches, and the fraction of MLP neurons that never fire on them (zero after
    the activation and AbsTopK at every position of every batch)."""
    model.eval()
    assert model.cfg.d_mlp is not None  # SparseTransformerConfig.__post_init__ sets it
    fired = torch.zeros(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool, device=cfg.device)

    def record(layer: int):
        def hook(post, hook):
            fired[layer] |= (post != 0).flatten(0, 1).any(0)

        return hook

    hooks: list[tuple[str | Callable, Callable]] = [
        (f"blocks.{layer}.mlp.hook_post", record(layer)) for layer in range(model.cfg.n_layers)
    ]
    losses = []
    with model.hooks(fwd_hooks=hooks):
        for i in range(cfg.eval_batches):
            tokens = sampler.batch(i, cfg.batch_size).to(cfg.device)
            losses.append(model(tokens, return_type="loss").item())
    model.train()
    return sum(losses) / len(losses), 1.0 - fired.float().mean().item()


def read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """Rows of an earlier run's metrics up to the step its checkpoint holds (a resumed run rewrites the rest)."""
    if not path.is_file():
        return []
    with path.open() as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) <= up_to_step]


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Replace the metrics table atomically: a crash mid-write leaves the previous table whole."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    checkpoint.write_text_atomic(path, text.getvalue())


def mean_over_ranks(value: torch.Tensor, world_size: int) -> float:
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size
    return value.item()


# -------------------------------------------------------------------------------------------------- train


def schedule(step: int, model_cfg: SparseTransformerConfig, cfg: TrainConfig) -> tuple[float, float, float]:
    """The recipe at `step` (counted from 0): L0 of the hidden matrices, L0 of the embeddings, learning rate."""
    l0 = l0_schedule(step, cfg.steps, model_cfg.weight_l0, cfg.l0_start_frac, cfg.l0_end_frac)
    l0_embed = l0_schedule(step, cfg.steps, model_cfg.embed_l0, cfg.l0_start_frac, cfg.l0_end_frac)
    return l0, l0_embed, lr_schedule(step, cfg.steps, cfg.lr, cfg.warmup_frac, l0, model_cfg.weight_l0)


def schedule_table(model_cfg: SparseTransformerConfig, cfg: TrainConfig) -> pd.DataFrame:
    """`schedule` at every step of a run, as `train` follows it: columns step (from 1, as in metrics.csv), l0,
    l0_embed and lr."""
    table = pd.DataFrame(
        [schedule(step, model_cfg, cfg) for step in range(cfg.steps)], columns=["l0", "l0_embed", "lr"]
    )
    table.insert(0, "step", range(1, cfg.steps + 1))
    return table


def decayed_parameters(model: SparseTransformer) -> list[torch.Tensor]:
    """The matrices weight decay applies to (not the bigram table, biases, norms or sinks)."""
    return [p for name, p in model.named_parameters() if p.ndim >= 2 and not name.endswith(NO_DECAY_SUFFIXES)]


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the system (Linux only).

    A training step allocates and frees the same large tensors every time. By default glibc serves each of
    them with fresh pages, which the kernel must fault in and zero, thousands per step: on the shipped
    sparse configuration that is about a tenth of a step (`benchmarks/train_throughput.py`). This does
    what PyTorch's CPU tuning guide gets from preloading jemalloc or tcmalloc; the process keeps its peak
    memory until it exits.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, from glibc's malloc.h
    if hasattr(libc, "mallopt"):
        libc.mallopt(m_mmap_threshold, 1 << 30)  # up to 1 GiB from the reusable heap, not from fresh mappings
        libc.mallopt(m_trim_threshold, 1 << 30)  # give back free memory only beyond 1 GiB


class Objective(Protocol):
    """A training loss other than the next-token loss, with parameters of its own trained beside the model
    (`circuitlab.bridges.BridgeObjective`). `trainable` joins the model in Adam, in the gradient rescaling and in
    every resumable state; weight decay and top-k stay on the model's matrices."""

    @property
    def trainable(self) -> torch.nn.Module: ...

    @property
    def lr_scale(self) -> float: ...  # its parameters' learning rate, as a multiple of the model's

    def loss(self, model: SparseTransformer, tokens: torch.Tensor) -> torch.Tensor: ...


class TrainingDiverged(FloatingPointError):
    """The loss, the gradients or the weights became NaN or inf; the message says where the last good state is."""


def divergence(out_dir: Path, step: int, cfg: TrainConfig, reason: str) -> TrainingDiverged:
    """The error that stops a run at `step`, saying which checkpoint survives and what to change."""
    found = find_training_state(out_dir)
    kept = f"the last good checkpoint, {found[0]} (step {found[1]}), is kept" if found else "no checkpoint was saved"
    return TrainingDiverged(
        f"Training diverged at step {step}: {reason}. No checkpoint was written from it; {kept}. Lower train.lr "
        f"(now {cfg.lr:g}) and train again in a new --out folder (or in this one with --overwrite)."
    )


def training_step(
    model: SparseTransformer,
    optimizer: torch.optim.Optimizer,
    tokens: torch.Tensor,
    *,
    lr: float,
    l0: float,
    l0_embed: float,
    weight_decay: float,
    forward: torch.nn.Module | None = None,
    objective: Objective | None = None,
) -> tuple[torch.Tensor, int]:
    """One step of the recipe: next-token loss (or `objective`'s), backward, gradients rescaled to RMS 1, Adam at
    `lr`, decoupled weight decay, top-k projection. `forward` is the module to call (a DDP wrapper of `model`);
    returns the loss and the number of nonzero matrix weights. Raises TrainingDiverged, before the weights change,
    when the gradients are not finite (under DDP they are averaged first, so every rank stops at the same step)."""
    loss = (forward or model)(tokens, return_type="loss") if objective is None else objective.loss(model, tokens)
    loss.backward()
    rms = normalize_gradients_([param for group in optimizer.param_groups for param in group["params"]])
    if not math.isfinite(rms):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"the loss is {loss.item():.4g} and the gradients' RMS {rms}")
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        torch._foreach_mul_(decayed_parameters(model), 1 - weight_decay * lr)
    return loss.detach(), project_topk_(model.weight_matrices(), l0, l0_embed, model.cfg.min_weights_per_unit)


def parameter_groups(model: SparseTransformer, objective: Objective | None) -> list[dict[str, Any]]:
    """Adam's parameter groups: the model's at the scheduled rate, the objective's at `lr_scale` times it (the
    order the saved states keep them in, `checkpoint.optimized_names`)."""
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr_scale": 1.0}]
    if objective is not None:
        groups.append({"params": list(objective.trainable.parameters()), "lr_scale": objective.lr_scale})
    return groups


def initial_model(model_cfg: SparseTransformerConfig, cfg: TrainConfig) -> SparseTransformer:
    """A freshly initialised model, or the checkpoint `cfg.init_from` when its config is the model section."""
    model = SparseTransformer(model_cfg)
    if cfg.init_from is not None:
        start = SparseTransformer.from_pretrained(cfg.init_from)
        changed = checkpoint.differences(start.cfg.to_dict(), model_cfg.to_dict(), "the model section")
        if changed:
            raise SettingsError(
                f"train.init_from={cfg.init_from!r} has another model config ({'; '.join(changed)}); make the "
                "model section the checkpoint's config.json"
            )
        model.load_state_dict(start.state_dict())
    return model


def train(
    model_cfg: SparseTransformerConfig, cfg: TrainConfig, progress: bool = True, objective: Objective | None = None
) -> SparseTransformer:
    """Train a model with the weight-sparse recipe (dense when weight_l0 == embed_l0 == 1 and afrac is None);
    runs under torchrun with DistributedDataParallel when WORLD_SIZE > 1 (only rank 0 writes files). With an
    `objective`, its loss replaces the next-token loss and its own parameters train too (one process only)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if objective is not None and world_size > 1:
        raise SettingsError("Training with an objective (e.g. bridges) runs in one process; start it without torchrun")
    if cfg.batch_size % world_size:
        raise SettingsError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world_size})")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cfg.device == "cuda" else "gloo")
    if cfg.device == "cuda" and world_size > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    torch.manual_seed(cfg.seed)
    is_main = rank == 0
    out_dir = Path(cfg.out_dir)

    model = initial_model(model_cfg, cfg).to(cfg.device)
    companion = None if objective is None else objective.trainable.to(cfg.device)
    vocab_size = model.tokenizer.get_vocab_size()
    if vocab_size > model_cfg.d_vocab:
        raise SettingsError(
            f"model.d_vocab={model_cfg.d_vocab} is smaller than the tokenizer's vocabulary ({vocab_size}); "
            f"set it to at least {vocab_size}"
        )
    optimizer = torch.optim.Adam(parameter_groups(model, objective), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    streams = load_token_streams()
    mix = cfg.synthetic_mix
    train_sampler = TokenSampler(
        streams, "train", model_cfg.n_ctx, cfg.synthetic_fraction, cfg.seed, mix, cfg.repeat_fraction
    )
    val_sampler = TokenSampler(streams, "val", model_cfg.n_ctx, cfg.synthetic_fraction, VAL_SEED, mix)
    if is_main:  # only now, so that a config or model that fails leaves no files behind
        prepare_out_dir(out_dir, cfg)
    if world_size > 1:
        dist.barrier()

    start_step = 0
    found = find_training_state(out_dir) if cfg.resume else None
    if found:
        check_same_trajectory(out_dir / TRAIN_CONFIG_FILE, cfg)
        start_step = load_training_state(found[0], model, optimizer, companion=companion)
    if cfg.resume and is_main:
        print(
            f"Resuming {out_dir} from step {start_step} ({found[0]})"
            if found
            else f"{out_dir} holds no complete checkpoint to resume: starting at step 0",
            flush=True,
        )
    forward = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model

    metrics = read_metrics(out_dir / METRICS_FILE, start_step) if is_main else []
    if is_main:
        checkpoint.write_text_atomic(out_dir / checkpoint.CONFIG_FILE, checkpoint.config_json(model_cfg))
        train_json = json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"
        checkpoint.write_text_atomic(out_dir / TRAIN_CONFIG_FILE, train_json)
    local_batch = cfg.batch_size // world_size
    tokens_per_step = cfg.batch_size * model_cfg.n_ctx
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, disable=not (progress and is_main))
    seconds, timed_steps = 0.0, 0  # training time since the last log line (evaluation and saving excluded)
    model.train()
    for step in bar:
        started = time.perf_counter()
        l0, l0_embed, lr = schedule(step, model_cfg, cfg)
        tokens = train_sampler.batch(step, cfg.batch_size)[rank * local_batch : (rank + 1) * local_batch]
        try:
            loss, nonzero = training_step(
                model,
                optimizer,
                tokens.to(cfg.device),
                lr=lr,
                l0=l0,
                l0_embed=l0_embed,
                weight_decay=cfg.weight_decay,
                forward=forward,
                objective=objective,
            )
        except TrainingDiverged as err:
            raise divergence(out_dir, step + 1, cfg, str(err)) from None
        seconds += time.perf_counter() - started
        timed_steps += 1

        last_step = step + 1 == cfg.steps
        log_now = step % cfg.log_every == 0 or last_step
        train_loss = mean_over_ranks(loss, world_size) if log_now else None  # all ranks take part
        if is_main and train_loss is not None:  # a logging step
            row = {
                "step": step + 1,
                "tokens": (step + 1) * tokens_per_step,
                "train_loss": round(train_loss, 4),
                "val_loss": "",
                "l0": round(l0, 5),
                "nonzero_params": nonzero,
                "dead_neurons": "",
                "lr": f"{lr:.3e}",
                "tokens_per_s": round(timed_steps * tokens_per_step / seconds),
            }
            seconds, timed_steps = 0.0, 0
            if step % cfg.eval_every == 0 or last_step:
                val_loss, dead = validation_metrics(model, val_sampler, cfg)
                row.update(val_loss=round(val_loss, 4), dead_neurons=round(dead, 4))
            metrics.append(row)
            write_metrics(out_dir / METRICS_FILE, metrics)
            bar.set_postfix(loss=row["train_loss"], l0=row["l0"], val=row["val_loss"])
        if (step + 1) % cfg.checkpoint_every == 0 or last_step:
            if not all(param.isfinite().all() for param in model.parameters()):  # every rank: they stop together
                raise divergence(out_dir, step + 1, cfg, "some weights are NaN or inf")
            if is_main:
                save_training_state(out_dir, model, optimizer, step + 1, companion=companion)
    if is_main:
        model.save_pretrained(out_dir, overwrite=True)
    if world_size > 1:
        record_rank_agreement(model, out_dir / "ranks.json", is_main)
    return model


@torch.no_grad()
def record_rank_agreement(model: SparseTransformer, path: Path, is_main: bool) -> None:
    """Gather every rank's weight fingerprint (sums and nonzero counts per tensor) and write them, so a
    distributed run can prove its ranks ended with identical weights and masks."""
    fingerprint = torch.stack([torch.stack([p.double().sum(), (p != 0).sum().double()]) for p in model.parameters()])
    gathered = [torch.zeros_like(fingerprint) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, fingerprint)
    if is_main:
        path.write_text(json.dumps([g.flatten().tolist() for g in gathered]) + "\n")
    dist.barrier()


def run_parser(description: str, sections: str) -> argparse.ArgumentParser:
    """The command line of a training run (`train`, `make_bridges`): a config YAML with `sections`, the output
    folder, resume or overwrite, `--set` overrides and no progress bar."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, type=Path, help=f"YAML with {sections} sections")
    parser.add_argument("--out", help="output folder (overrides train.out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="SECTION.FIELD=VALUE", help="override config values"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and batch jobs)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = run_parser("Train a weight-sparse SparseTransformer (or its dense baseline).", "model: and train:")
    args = parser.parse_args(argv)
    try:
        model_cfg, cfg = load_config(args.config, args.set)
        cfg = dataclasses.replace(
            cfg,
            out_dir=args.out or cfg.out_dir,
            resume=args.resume or cfg.resume,
            overwrite=args.overwrite or cfg.overwrite,
        )
        train(model_cfg, cfg, progress=not args.no_progress)
    except (SettingsError, CheckpointError, FileExistsError, FileNotFoundError, TrainingDiverged) as err:
        raise SystemExit(f"circuitlab.train: error: {err}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
