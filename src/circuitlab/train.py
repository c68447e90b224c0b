"""Train a weight-sparse (or dense baseline) SparseTransformer with the paper's recipe.

    python -m circuitlab.train --config configs/sparse.yaml [--out DIR] [--resume] [--overwrite] [--set train.steps=100]
    torchrun --nproc_per_node=2 -m circuitlab.train --config configs/sparse.yaml     # DistributedDataParallel

Each step: next-token loss on a batch of real and synthetic Python, gradients rescaled to global RMS 1, Adam
(betas 0.9/0.95, eps 0.1), decoupled weight decay on the matrices, then every weight matrix projected onto
its top-k magnitudes with k annealed from dense (`circuitlab.sparsity`). The output folder gets the final
model, `metrics.csv`, the config, and a resumable `checkpoint/` (safetensors + JSON).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

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


@dataclass
class TrainConfig:
    """Optimisation settings; the defaults are the paper's recipe at CPU scale (see configs/*.yaml)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 0.1
    weight_decay: float = 0.1  # decoupled: w -= weight_decay * lr * w after each step
    warmup_frac: float = 0.01
    l0_start_frac: float = 0.01
    l0_end_frac: float = 0.5
    synthetic_fraction: float = 0.5
    eval_every: int = 100
    eval_batches: int = 4
    log_every: int = 10
    checkpoint_every: int = 200
    out_dir: str = "runs/model"
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"
    seed: int = 0
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


# ------------------------------------------------------------------------------------------------ helpers


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


def make_optimizer(model: SparseTransformer, cfg: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def decayed_parameters(model: SparseTransformer) -> list[torch.nn.Parameter]:
    """The matrices weight decay applies to (not the bigram table, biases, norms or sinks)."""
    return [p for name, p in model.named_parameters() if p.ndim >= 2 and not name.endswith(NO_DECAY_SUFFIXES)]


def save_checkpoint(directory: Path, model: SparseTransformer, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Model + Adam state + step, all safetensors/JSON; written to a temporary folder, then swapped in."""
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    names = {id(p): name for name, p in model.named_parameters()}
    state = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                state[f"{names[id(param)]}/{key}"] = torch.as_tensor(value).clone()
    save_file(state, temporary / "optimizer.safetensors")
    (temporary / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)


def load_checkpoint(directory: Path, model: SparseTransformer, optimizer: torch.optim.Optimizer) -> int:
    """Restore model weights and Adam state from `save_checkpoint`; returns the step to continue from."""
    saved = SparseTransformer.from_pretrained(directory)
    if saved.cfg != model.cfg:
        raise ValueError(f"{directory} was trained with a different model config; resume with the same config.")
    model.load_state_dict(saved.state_dict())
    params = dict(model.named_parameters())
    for key, value in load_file(directory / "optimizer.safetensors").items():
        name, _, field = key.rpartition("/")
        optimizer.state[params[name]][field] = value
    return json.loads((directory / "trainer_state.json").read_text())["step"]


@torch.no_grad()
def evaluate(model: SparseTransformer, sampler: TokenSampler, cfg: TrainConfig) -> tuple[float, float]:
    """Validation loss on fixed batches, and the fraction of MLP neurons that never fire on them."""
    model.eval()
    fired = torch.zeros(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool)

    def record(layer: int):
        def hook(post, hook):
            fired[layer] |= (post != 0).flatten(0, 1).any(0).cpu()

        return hook

    hooks = [(f"blocks.{layer}.mlp.hook_post", record(layer)) for layer in range(model.cfg.n_layers)]
    losses = []
    with model.hooks(fwd_hooks=hooks):
        for i in range(cfg.eval_batches):
            tokens = sampler.batch(i, cfg.batch_size).to(cfg.device)
            losses.append(model(tokens, return_type="loss").item())
    model.train()
    return sum(losses) / len(losses), 1.0 - fired.float().mean().item()


def read_metrics(path: Path, before_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) < before_step]


# -------------------------------------------------------------------------------------------------- train


def train(model_cfg: SparseTransformerConfig, cfg: TrainConfig, progress: bool = True) -> SparseTransformer:
    """Train a model with the weight-sparse recipe (dense when model_cfg.weight_l0 == embed_l0 == 1); runs
    under torchrun with DistributedDataParallel when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cfg.device == "cuda" else "gloo")
    if cfg.device == "cuda" and world_size > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world_size})")
    is_main = rank == 0
    out_dir = Path(cfg.out_dir)
    prepare_out_dir(out_dir, cfg, is_main)
    if world_size > 1:
        dist.barrier()

    model = SparseTransformer(model_cfg).to(cfg.device)
    optimizer = make_optimizer(model, cfg)
    start_step = 0
    if cfg.resume and (out_dir / "checkpoint").is_dir():
        start_step = load_checkpoint(out_dir / "checkpoint", model, optimizer)
    trainable = list(model.parameters())
    decayed = decayed_parameters(model)
    forward = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model

    streams = load_token_streams()
    train_sampler = TokenSampler(streams, "train", model_cfg.n_ctx, cfg.synthetic_fraction, cfg.seed)
    val_sampler = TokenSampler(streams, "val", model_cfg.n_ctx, cfg.synthetic_fraction, seed=12345)
    if is_main:
        model_cfg.save(out_dir / "model_config.json")
        (out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    metrics = read_metrics(out_dir / "metrics.csv", start_step) if is_main else []
    local_batch = cfg.batch_size // world_size
    tokens_per_step = cfg.batch_size * model_cfg.n_ctx
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, disable=not (progress and is_main))
    tick, ticked_steps = time.perf_counter(), 0
    model.train()
    for step in bar:
        l0 = l0_schedule(step, cfg.steps, model_cfg.weight_l0, cfg.l0_start_frac, cfg.l0_end_frac)
        l0_embed = l0_schedule(step, cfg.steps, model_cfg.embed_l0, cfg.l0_start_frac, cfg.l0_end_frac)
        lr = lr_schedule(step, cfg.steps, cfg.lr, cfg.warmup_frac, l0, model_cfg.weight_l0)
        tokens = train_sampler.batch(step, cfg.batch_size)[rank * local_batch : (rank + 1) * local_batch]
        loss = forward(tokens.to(cfg.device), return_type="loss")
        loss.backward()
        normalize_gradients_(trainable)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for param in decayed:
                param.mul_(1 - cfg.weight_decay * lr)
        nonzero = project_topk_(model.weight_matrices(), l0, l0_embed, model_cfg.min_weights_per_unit)
        ticked_steps += 1

        last_step = step + 1 == cfg.steps
        if is_main and (step % cfg.log_every == 0 or last_step):
            row = {
                "step": step + 1,
                "tokens": (step + 1) * tokens_per_step,
                "train_loss": round(loss.item(), 4),
                "val_loss": "",
                "l0": round(l0, 5),
                "nonzero_params": nonzero,
                "dead_neurons": "",
                "lr": f"{lr:.3e}",
                "tokens_per_s": round(ticked_steps * tokens_per_step / (time.perf_counter() - tick)),
            }
            tick, ticked_steps = time.perf_counter(), 0
            if step % cfg.eval_every == 0 or last_step:
                val_loss, dead = evaluate(model, val_sampler, cfg)
                row.update(val_loss=round(val_loss, 4), dead_neurons=round(dead, 4))
            metrics.append(row)
            write_metrics(out_dir / "metrics.csv", metrics)
            bar.set_postfix(loss=row["train_loss"], l0=row["l0"], val=row["val_loss"])
        if is_main and ((step + 1) % cfg.checkpoint_every == 0 or last_step):
            save_checkpoint(out_dir / "checkpoint", model, optimizer, step + 1)
    if is_main:
        model.save_pretrained(out_dir / "model", overwrite=True)
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


def write_metrics(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a weight-sparse SparseTransformer (or its dense baseline).")
    parser.add_argument("--config", required=True, type=Path, help="YAML with model: and train: sections")
    parser.add_argument("--out", help="output folder (overrides train.out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="override config values")
    parser.add_argument("--no-progress", action="store_true")
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
