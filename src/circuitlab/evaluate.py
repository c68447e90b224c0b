"""How good is a model: validation loss on held-out code, accuracy on every task (templated and natural), and
how many of its weights survive (`weight_report`).

python -m circuitlab.evaluate data/checkpoints/sparse data/checkpoints/dense --out data/checkpoints/README.md
python -m circuitlab.evaluate data/checkpoints/sparse data/checkpoints/dense --pairs 200 --natural 500
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from circuitlab import settings, tasks
from circuitlab.checkpoint import CheckpointError
from circuitlab.corpus import TokenSampler, load_token_streams
from circuitlab.model import SparseTransformer
from circuitlab.settings import SettingsError
from circuitlab.tasks import Datapoint, make_batch, task_accuracy, task_loss

DEFAULT_PAIRS = 500  # held-out pairs per task in the evaluation command
SHIPPED_TITLE = "The shipped models"  # the heading of data/checkpoints/README.md, which the command writes


@torch.no_grad()
def validation_loss(
    model: SparseTransformer,
    source: str | float = "real",
    n_batches: int = 16,
    batch_size: int = 32,
    mix: str = "templates",
) -> float:
    """Mean next-token loss on held-out windows of real code ("real"), of the synthetic `mix`'s snippets
    ("synthetic"), or of both with `source` the share of synthetic rows (a run's `synthetic_fraction`: its mix)."""
    fraction = {"real": 0.0, "synthetic": 1.0}[source] if isinstance(source, str) else source
    sampler = TokenSampler(load_token_streams(), "val", model.cfg.n_ctx, fraction, seed=2024, mix=mix)
    return sum(model(sampler.batch(i, batch_size), return_type="loss").item() for i in range(n_batches)) / n_batches


@torch.no_grad()
def copying_gain(model: SparseTransformer, length: int | None = None, n_windows: int = 64) -> float:
    """In-context copying, which every name lookup needs (an induction head): held-out windows of real code,
    `length` tokens each (default: half the context), read once after a copy of themselves and once after another
    window; the mean next-token loss on them the second way minus the first (nats per token). A model that copies
    predicts a repeated window far better; one that does not gains nothing."""
    length = model.cfg.n_ctx // 2 if length is None else length
    if not 2 <= length <= model.cfg.n_ctx // 2:
        raise ValueError(f"length={length} must be between 2 and half the context ({model.cfg.n_ctx // 2})")
    sampler = TokenSampler(load_token_streams(), "val", model.cfg.n_ctx, 0.0, seed=2025)
    windows = sampler.batch(0, n_windows)[:, :length]
    repeated = torch.cat([windows, windows], dim=1)
    unrepeated = torch.cat([windows.roll(1, dims=0), windows], dim=1)

    def second_window_loss(tokens: torch.Tensor) -> float:
        logits = model(tokens)[:, length - 1 : -1]
        return F.cross_entropy(logits.transpose(1, 2), tokens[:, length:]).item()

    return second_window_loss(unrepeated) - second_window_loss(repeated)


@torch.no_grad()
def task_scores(model: SparseTransformer, name: str, n_pairs: int = 500, batch_pairs: int = 100) -> dict[str, float]:
    """Accuracy and mean per-prompt task loss on `n_pairs` held-out (test split) templated pairs, drawn in batches
    of `batch_pairs` (the last one smaller when `n_pairs` is not a multiple)."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs={n_pairs} must be at least 1")
    task, losses, correct = tasks.get(name), [], []
    for seed, start in enumerate(range(0, n_pairs, batch_pairs)):
        size = min(batch_pairs, n_pairs - start)
        batch = task.batch(model.tokenizer, "test", size, seed=seed, n_ctx=model.cfg.n_ctx)
        logits = model(batch.tokens)
        losses.append(task_loss(logits, batch).item() * size)
        correct.append(task_accuracy(logits, batch) * size)
    return {"accuracy": sum(correct) / n_pairs, "loss": sum(losses) / n_pairs}


def natural_scores(
    model: SparseTransformer, name: str, split: str = "val", limit: int | None = None
) -> dict[str, float]:
    """Accuracy and mean task loss on instances harvested from held-out real code (prompts keep their last n_ctx
    tokens), their number ``n``, and ``commoner``: the share of the commoner answer, the accuracy of always
    guessing it (NaN scores when the split has none)."""
    return scores_on_points(model, tasks.harvest(name, split=split, limit=limit))


@torch.no_grad()
def scores_on_points(model: SparseTransformer, points: list[Datapoint]) -> dict[str, float]:
    """`natural_scores` on instances already harvested (harvest once, score every model)."""
    if not points:
        return {"accuracy": math.nan, "loss": math.nan, "n": 0, "commoner": math.nan}
    accuracies, losses = [], []
    for start in range(0, len(points), 50):
        batch = make_batch(model.tokenizer, points[start : start + 50], n_ctx=model.cfg.n_ctx)
        logits = model(batch.tokens)
        accuracies.append(task_accuracy(logits, batch) * len(batch))
        losses.append(task_loss(logits, batch, reduction="sum").item())
    commoner = Counter(point.target for point in points).most_common(1)[0][1]
    n = len(points)
    return {"accuracy": sum(accuracies) / n, "loss": sum(losses) / n, "n": n, "commoner": commoner / n}


def natural_against_templated(models: dict[str, SparseTransformer], n_pairs: int, limit: int | None) -> pd.DataFrame:
    """One row per harvested task: its natural instances in the val split (at most ``limit``; their number and
    the commoner answer's share), and each model's accuracy on them and on ``n_pairs`` templated test pairs."""
    rows = {}
    for task in tasks.HARVESTED:
        points = tasks.harvest(task, limit=limit)
        scores = {name: scores_on_points(model, points) for name, model in models.items()}
        first = next(iter(scores.values()))
        rows[task] = {"n natural": first["n"], "commoner answer": _percent(first["commoner"])}
        for name, model in models.items():
            rows[task][f"{name}: natural"] = _percent(scores[name]["accuracy"])
            rows[task][f"{name}: templated"] = _percent(task_scores(model, task, n_pairs)["accuracy"])
    return pd.DataFrame(rows).T


def _percent(fraction: float) -> str:
    return "–" if math.isnan(fraction) else f"{fraction:.1%}"


def nonzero_weights(model: SparseTransformer) -> int:
    """Nonzero entries over all weight matrices (embeddings included; biases, norms and bigram table not)."""
    return sum(int(weight.count_nonzero()) for weight, _ in model.weight_matrices().values())


def weight_report(model: SparseTransformer) -> pd.DataFrame:
    """One row per weight matrix (`model.weight_matrices()`): its name, kind (`W_Q`, `W_in`, ...), shape, nonzero
    entries, size and the fraction kept. Biases, norms and the bigram table are never sparsified: not listed."""
    report = pd.DataFrame(
        {
            "matrix": name,
            "kind": name.rsplit(".", 1)[-1],
            "shape": tuple(weight.shape),
            "nonzero": int(weight.count_nonzero()),
            "size": weight.numel(),
        }
        for name, (weight, _) in model.weight_matrices().items()
    )
    report["kept"] = report["nonzero"] / report["size"]
    return report


def provenance(checkpoint: Path) -> dict[str, object]:
    """How a checkpoint made by `circuitlab.train` was trained, read from the files the trainer leaves."""
    train_cfg = json.loads((checkpoint / "train_config.json").read_text())
    model_cfg = json.loads((checkpoint / "config.json").read_text())
    metrics = pd.read_csv(checkpoint / "metrics.csv")
    return {
        "layers x d_model": f"{model_cfg['n_layers']} x {model_cfg['d_model']}",
        "weight L0 (embed L0)": f"{model_cfg['weight_l0']} ({model_cfg['embed_l0']})",
        "AbsTopK afrac": model_cfg["afrac"],
        "steps": train_cfg["steps"],
        "tokens": f"{int(metrics.tokens.iloc[-1]) / 1e6:.1f} M",
        "synthetic fraction": train_cfg["synthetic_fraction"],
        "synthetic mix": train_cfg.get("synthetic_mix", "templates"),  # runs from before the mixes: templates
        "peak lr": train_cfg["lr"],
        "mean tokens/s": round(metrics.tokens_per_s.mean()),
    }


def report(checkpoints: list[Path], n_pairs: int) -> str:
    """The markdown tables of data/checkpoints/README.md."""
    models = {path.name: SparseTransformer.from_pretrained(path) for path in checkpoints}
    trained = pd.DataFrame(
        {path.name: provenance(path) for path in checkpoints if (path / "train_config.json").is_file()}
    ).T
    overview = pd.DataFrame(
        {
            name: {
                "val loss, real code": round(validation_loss(model, "real"), 3),
                "val loss, synthetic": round(validation_loss(model, "synthetic"), 3),
                "nonzero matrix weights": f"{nonzero_weights(model):,}",
            }
            for name, model in models.items()
        }
    ).T
    accuracy = pd.DataFrame(
        {name: {task: task_scores(model, task, n_pairs) for task in tasks.names()} for name, model in models.items()}
    )
    by_task = accuracy.map(lambda s: f"{s['accuracy']:.1%} ({s['loss']:.3f})")
    harvested = {task: tasks.harvest(task) for task in tasks.HARVESTED}
    natural = pd.DataFrame(
        {
            name: {task: scores_on_points(model, points) for task, points in harvested.items()}
            for name, model in models.items()
        }
    )
    natural_text = natural.map(lambda s: f"{s['accuracy']:.1%} ({s['loss']:.3f}, n={s['n']})" if s["n"] else "– (n=0)")
    return "\n\n".join(
        [
            "### Training (from each folder's train_config.json and metrics.csv)",
            trained.to_markdown(),
            "### Validation loss (nats/token, held-out files and snippets)",
            overview.to_markdown(),
            f"### Accuracy (mean task loss) on {n_pairs} held-out templated pairs per task",
            by_task.to_markdown(),
            "### Accuracy (mean task loss) on natural instances harvested from real code",
            natural_text.to_markdown(),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate checkpoints on held-out code and every task.")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="held-out pairs per task (at least 1)")
    parser.add_argument("--out", type=Path, help="write the markdown here instead of printing it")
    parser.add_argument("--title", default=SHIPPED_TITLE, help="the markdown's heading (with --out)")
    parser.add_argument(
        "--natural",
        type=int,
        metavar="LIMIT",
        help="print only natural against templated accuracy on the harvested tasks, at most LIMIT natural "
        "instances per task (held-out val files), and the wall time",
    )
    args = parser.parse_args(argv)
    try:
        pairs = settings.coerce(args.pairs, int, "--pairs")
    except SettingsError as err:
        parser.error(str(err))
    if pairs < 1:
        parser.error(f"--pairs={pairs} must be at least 1")
    if args.natural is not None and args.natural < 1:
        parser.error(f"--natural={args.natural} must be at least 1")
    if args.natural is not None:
        _print_natural(args.checkpoints, pairs, args.natural)
        return
    try:
        text = report(args.checkpoints, pairs)
    except (CheckpointError, SettingsError, FileNotFoundError) as err:
        sys.exit(f"circuitlab.evaluate: error: {err}")
    if args.out:
        options = [f"--pairs {pairs}"] * (pairs != DEFAULT_PAIRS) + [f"--out {args.out}"]
        options += [f"--title {shlex.quote(args.title)}"] * (args.title != SHIPPED_TITLE)
        command = " ".join(["python -m circuitlab.evaluate", *map(str, args.checkpoints), *options])
        header = f"# {args.title}\n\nEvaluated by `{command}`; the README says how each was trained.\n\n"
        args.out.write_text(header + text + "\n")
    print(text)


def _print_natural(checkpoints: list[Path], pairs: int, limit: int) -> None:
    started = time.perf_counter()
    try:
        models = {path.name: SparseTransformer.from_pretrained(path) for path in checkpoints}
    except (CheckpointError, SettingsError, FileNotFoundError) as err:
        sys.exit(f"circuitlab.evaluate: error: {err}")
    print(natural_against_templated(models, pairs, limit).to_markdown())
    print(f"\n{time.perf_counter() - started:.0f} s, {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
