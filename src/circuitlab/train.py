"""Train a weight-sparse (or dense baseline) SparseTransformer with the paper's recipe.

    python -m circuitlab.train --config configs/sparse.yaml [--out DIR] [--resume] [--overwrite] [--set train.steps=100]
    torchrun --nproc_per_node=2 -m circuitlab.train --config configs/sparse.yaml     # DistributedDataParallel

Each step: next-token loss on a batch of real and synthetic Python, gradients rescaled to global RMS 1, Adam
(betas 0.9/0.95, eps 0.1), decoupled weight decay on the matrices, then every weight matrix projected onto
its top-k magnitudes with k annealed from dense (`circuitlab.sparsity`).

The output folder ends up as a loadable checkpoint (`SparseTransformer.from_pretrained(out_dir)`) that also
holds `metrics.csv`, `train_config.json` and a resumable `checkpoint/` (model, Adam state, step and RNG;
safetensors + JSON).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from circuitlab import checkpoint
from circuitlab.config import SparseTransformerConfig
from circuitlab.corpus import TokenSampler, load_token_streams
from circuitlab.model import SparseTransformer
from circuitlab.sparsity import l0_schedule, lr_schedule, normalize_gradients_, project_topk_

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
    "seed",
)
VAL_SEED = 12345  # validation batches are the same for every run, so runs compare on the same text
CHECKPOINT_DIR = "checkpoint"


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
    eval_every: int = 100  # steps between validation-loss and dead-neuron evaluations
    eval_batches: int = 4  # validation batches (of batch_size rows) per evaluation
    log_every: int = 10
    checkpoint_every: int = 200
    out_dir: str = "runs/model"
    resume: bool = False  # continue from out_dir/checkpoint
    overwrite: bool = False  # delete a non-empty out_dir first
    device: str = "cpu"  # "cpu" or "cuda"
    seed: int = 0  # batches are a pure function of (seed, step)
    threads: int | None = None  # torch intra-op threads per process; None keeps torch's default

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {unknown}. Valid fields: {sorted(known)}")
        if "betas" in values:
            values = {**values, "betas": tuple(values["betas"])}
        return cls(**values)


def load_config(path: str | Path, overrides: list[str] = ()) -> tuple[SparseTransformerConfig, TrainConfig]:
    """Read a YAML file with `model:` and `train:` sections; `overrides` are "section.field=value" strings."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(raw) - {"model", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; a config has 'model:' and 'train:' sections")
    sections = {"model": dict(raw.get("model") or {}), "train": dict(raw.get("train") or {})}
    for override in overrides:
        key, sep, value = override.partition("=")
        section, _, field = key.partition(".")
        if not sep or section not in sections or not field:
            raise ValueError(f"--set {override!r}: use section.field=value, e.g. train.steps=100")
        sections[section][field] = yaml.safe_load(value)
    return SparseTransformerConfig.from_dict(sections["model"]), TrainConfig.from_dict(sections["train"])


# ------------------------------------------------------------------------------------------ output folder


def prepare_out_dir(out_dir: Path, cfg: TrainConfig, is_main: bool) -> None:
    """Refuse to write into a non-empty folder unless resuming or told to overwrite."""
    if out_dir.exists() and any(out_dir.iterdir()) and not cfg.resume:
        if not cfg.overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty. Pass --resume to continue that run, --overwrite to replace it, "
                "or choose another --out folder."
            )
        if is_main:
            shutil.rmtree(out_dir)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)


def check_same_trajectory(saved_path: Path, cfg: TrainConfig) -> None:
    """A resumed run must use the settings its checkpoint was trained with, or it would silently diverge."""
    saved = json.loads(saved_path.read_text())
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples become lists, like the saved file
    changed = [
        f"{name}: {saved.get(name)!r} -> {now[name]!r}" for name in TRAJECTORY_FIELDS if saved.get(name) != now[name]
    ]
    if changed:
        raise ValueError(
            f"Cannot resume {saved_path.parent}: these settings differ from the run's ({'; '.join(changed)}). "
            "Resume with the same settings, or start a new run in another folder."
        )


# -------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(directory: Path, model: SparseTransformer, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Model, Adam state (keyed by parameter name), step and RNG state, all safetensors/JSON; written to a
    temporary folder, then swapped in, so a crash never leaves a half-written checkpoint."""
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    names = [name for name, _ in model.named_parameters()]
    state = {
        f"{names[index]}/{key}": torch.as_tensor(value).detach().cpu().contiguous()
        for index, fields in optimizer.state_dict()["state"].items()
        for key, value in fields.items()
    }
    save_file(state, temporary / "optimizer.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, temporary / "rng.safetensors")
    (temporary / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)


def load_checkpoint(directory: Path, model: SparseTransformer, optimizer: torch.optim.Optimizer) -> int:
    """Restore what `save_checkpoint` wrote into `model` and `optimizer`; returns the step to continue from."""
    saved = SparseTransformer.from_pretrained(directory)
    if saved.cfg != model.cfg:
        raise ValueError(f"{directory} was trained with a different model config; resume with the same config.")
    model.load_state_dict(saved.state_dict())
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(directory / "optimizer.safetensors").items():
        name, _, field = key.rpartition("/")
        state.setdefault(index[name], {})[field] = value
    # load_state_dict moves the moments to each parameter's device and dtype
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    if (directory / "rng.safetensors").is_file():
        rng = load_file(directory / "rng.safetensors")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((directory / "trainer_state.json").read_text())["step"]


# ------------------------------------------------------------------------------------------------ metrics


@torch.no_grad()
def evaluate(model: SparseTransformer, sampler: TokenSampler, cfg: TrainConfig) -> tuple[float, float]:
    """Validation loss on fixed batches, and the fraction of MLP neurons that never fire on them (zero after
    the activation and AbsTopK at every position of every batch)."""
    model.eval()
    fired = torch.zeros(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool, device=cfg.device)

    def record(layer: int):
        def hook(post, hook):
            fired[layer] |= (post != 0).flatten(0, 1).any(0)

        return hook

    hooks = [(f"blocks.{layer}.mlp.hook_post", record(layer)) for layer in range(model.cfg.n_layers)]
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
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def mean_over_ranks(value: torch.Tensor, world_size: int) -> float:
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size
    return value.item()


# -------------------------------------------------------------------------------------------------- train


def decayed_parameters(model: SparseTransformer) -> list[torch.nn.Parameter]:
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
) -> tuple[torch.Tensor, int]:
    """One step of the recipe: next-token loss, backward, gradients rescaled to RMS 1, Adam at `lr`, decoupled
    weight decay, top-k projection. `forward` is the module to call (a DDP wrapper of `model`); returns the
    loss and the number of nonzero matrix weights."""
    loss = (forward or model)(tokens, return_type="loss")
    loss.backward()
    normalize_gradients_(list(model.parameters()))
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        torch._foreach_mul_(decayed_parameters(model), 1 - weight_decay * lr)
    return loss.detach(), project_topk_(model.weight_matrices(), l0, l0_embed, model.cfg.min_weights_per_unit)


def train(model_cfg: SparseTransformerConfig, cfg: TrainConfig, progress: bool = True) -> SparseTransformer:
    """Train a model with the weight-sparse recipe (dense when weight_l0 == embed_l0 == 1 and afrac is None);
    runs under torchrun with DistributedDataParallel when WORLD_SIZE > 1 (only rank 0 writes files)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world_size})")
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
    prepare_out_dir(out_dir, cfg, is_main)
    if world_size > 1:
        dist.barrier()

    model = SparseTransformer(model_cfg).to(cfg.device)
    vocab_size = model.tokenizer.get_vocab_size()
    if vocab_size > model_cfg.d_vocab:
        raise ValueError(f"d_vocab={model_cfg.d_vocab} is smaller than the tokenizer's vocabulary ({vocab_size})")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    start_step = 0
    if cfg.resume and (out_dir / CHECKPOINT_DIR).is_dir():
        check_same_trajectory(out_dir / "train_config.json", cfg)
        start_step = load_checkpoint(out_dir / CHECKPOINT_DIR, model, optimizer)
    forward = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model

    streams = load_token_streams()
    train_sampler = TokenSampler(streams, "train", model_cfg.n_ctx, cfg.synthetic_fraction, cfg.seed)
    val_sampler = TokenSampler(streams, "val", model_cfg.n_ctx, cfg.synthetic_fraction, VAL_SEED)
    metrics = read_metrics(out_dir / "metrics.csv", start_step) if is_main else []
    if is_main:
        checkpoint.write_text_atomic(out_dir / checkpoint.CONFIG_FILE, checkpoint.config_json(model_cfg))
        (out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    local_batch = cfg.batch_size // world_size
    tokens_per_step = cfg.batch_size * model_cfg.n_ctx
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, disable=not (progress and is_main))
    seconds, timed_steps = 0.0, 0  # training time since the last log line (evaluation and saving excluded)
    model.train()
    for step in bar:
        started = time.perf_counter()
        l0 = l0_schedule(step, cfg.steps, model_cfg.weight_l0, cfg.l0_start_frac, cfg.l0_end_frac)
        l0_embed = l0_schedule(step, cfg.steps, model_cfg.embed_l0, cfg.l0_start_frac, cfg.l0_end_frac)
        lr = lr_schedule(step, cfg.steps, cfg.lr, cfg.warmup_frac, l0, model_cfg.weight_l0)
        tokens = train_sampler.batch(step, cfg.batch_size)[rank * local_batch : (rank + 1) * local_batch]
        loss, nonzero = training_step(
            model,
            optimizer,
            tokens.to(cfg.device),
            lr=lr,
            l0=l0,
            l0_embed=l0_embed,
            weight_decay=cfg.weight_decay,
            forward=forward,
        )
        seconds += time.perf_counter() - started
        timed_steps += 1

        last_step = step + 1 == cfg.steps
        log_now = step % cfg.log_every == 0 or last_step
        train_loss = mean_over_ranks(loss, world_size) if log_now else None  # all ranks take part
        if is_main and log_now:
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
                val_loss, dead = evaluate(model, val_sampler, cfg)
                row.update(val_loss=round(val_loss, 4), dead_neurons=round(dead, 4))
            metrics.append(row)
            write_metrics(out_dir / "metrics.csv", metrics)
            bar.set_postfix(loss=row["train_loss"], l0=row["l0"], val=row["val_loss"])
        if is_main and ((step + 1) % cfg.checkpoint_every == 0 or last_step):
            save_checkpoint(out_dir / CHECKPOINT_DIR, model, optimizer, step + 1)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a weight-sparse SparseTransformer (or its dense baseline).")
    parser.add_argument("--config", required=True, type=Path, help="YAML with model: and train: sections")
    parser.add_argument("--out", help="output folder (overrides train.out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="SECTION.FIELD=VALUE", help="override config values"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and batch jobs)")
    args = parser.parse_args(argv)
    model_cfg, cfg = load_config(args.config, args.set)
    cfg = dataclasses.replace(
        cfg,
        out_dir=args.out or cfg.out_dir,
        resume=args.resume or cfg.resume,
        overwrite=args.overwrite or cfg.overwrite,
    )
    train(model_cfg, cfg, progress=not args.no_progress)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
