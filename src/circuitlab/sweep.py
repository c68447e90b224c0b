"""The capability-versus-interpretability frontier (the paper's Figure 3): train a grid of models, several widths
at several budgets of nonzero hidden weights plus a dense baseline per width, and prune every task on each with one
fixed pruning setting.

    python -m circuitlab.sweep configs/frontier.yaml [--workers 2] [--out data/frontier] [--only w128_nz60k ...]

Each model trains into `<train.out_dir>/<name>/` (resumed by the trainer when it is there already). The output
folder gets three tables, a row appended as soon as it is known (`circuitlab.tables`):

* `circuits.csv`, one row per model and task (`CIRCUIT_COLUMNS`). A task the full model misses on a quick screen
  (`SCREEN_PAIRS` held-out pairs) is not pruned: its row has no nodes, edges or task loss and `solved` False.
* `models.csv`, one row per model once all its tasks are in `circuits.csv` (`MODEL_COLUMNS`).
* `noise.csv`, with a `noise:` section: one model's tasks pruned again under several pruning seeds (`NOISE_COLUMNS`).

A row already in a table is not computed again, so the same command resumes an interrupted sweep. Every model
and task is pruned with the config's one `prune:` setting: the per-task search of `circuitlab.search` is too
slow for a grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from circuitlab import settings, tables, tasks
from circuitlab.compare import geometric_mean
from circuitlab.config import SparseTransformerConfig
from circuitlab.evaluate import nonzero_weights, task_scores, validation_loss
from circuitlab.model import SparseTransformer
from circuitlab.prune import PruneConfig, mean_ablation_tokens, prune
from circuitlab.settings import SettingsError
from circuitlab.sparsity import EMBEDDING_MATRICES
from circuitlab.train import METRICS_FILE, TrainConfig, train

CIRCUIT_COLUMNS = ("model", "task", "nodes", "edges", "task_loss", "full_model_loss", "solved", "seconds")
"""circuits.csv: the circuit's nodes and edges and its loss on held-out test pairs (empty when the task is
unsolved), the full model's loss (on the pruner's test pairs, or on the screen's pairs when the screen skipped
pruning), whether the full model reaches the target, and the wall time of screening and pruning."""
NOISE_COLUMNS = ("model", "task", "seed", *CIRCUIT_COLUMNS[2:])
"""noise.csv: the circuits.csv columns, with the pruning seed."""
MODEL_COLUMNS = (
    "model",
    "width",
    "weight_l0",
    "nonzero_hidden",
    "nonzero_params",
    "total_params",
    "tokens",
    "val_loss",
    "val_loss_synthetic",
    "tasks_solved",
    "edges_geomean",
    "train_seconds",
    "prune_seconds",
)
"""models.csv: the name and d_model; the hidden matrices' weight L0; their nonzero weights; nonzero and total
entries of all weight matrices (embeddings included; biases, norms and the dense bigram table not); training
tokens (steps x batch x n_ctx); validation loss on held-out real code and on synthetic snippets; tasks solved;
the geometric mean of their circuits' edges (`compare.geometric_mean`: a circuit of no edges counts as one); the
trainer's time in training steps (from its metrics.csv, evaluation excluded); the summed wall time of the
model's circuits.csv rows."""
CIRCUITS_FILE, MODELS_FILE, NOISE_FILE = "circuits.csv", "models.csv", "noise.csv"
TABLES = {CIRCUITS_FILE: CIRCUIT_COLUMNS, MODELS_FILE: MODEL_COLUMNS, NOISE_FILE: NOISE_COLUMNS}
DEFAULT_OUT = "data/frontier"
SCREEN_PAIRS = 100  # held-out pairs on which the full model must reach the target before a task is pruned
SECTIONS = ("model", "train", "grid", "prune", "tasks", "noise", "out")
SET_BY_GRID = ("d_model", "n_heads", "weight_l0")  # model fields each grid point sets


@dataclass
class Grid:
    """The models of a sweep: one per width and nonzero budget, and one dense baseline per width with `dense`."""

    widths: list[int] = field(default_factory=list)  # d_model values; each has d_model / model.d_head heads
    nonzero: list[int] = field(default_factory=list)  # nonzero hidden weights: weight_l0 = budget / hidden weights
    dense: bool = True  # weight_l0 = embed_l0 = 1 and no AbsTopK, as configs/dense.yaml
    dense_lr: float | None = None  # the dense baselines' train.lr (None: the same); no sharkfin factor damps it

    def __post_init__(self) -> None:
        settings.coerce_fields(self)
        problems = []
        if not self.widths:
            problems.append("widths is empty: list d_model values, e.g. [64, 128, 256]")
        if not (self.nonzero or self.dense):
            problems.append("nonzero is empty and dense is false, so the grid has no model: list budgets")
        for name in ("widths", "nonzero"):
            values = getattr(self, name)
            if any(value < 1 for value in values):
                problems.append(f"{name}={values} must all be at least 1")
            if len(set(values)) < len(values):
                problems.append(f"{name}={values} lists a value twice")
        settings.check(self, {"dense_lr": settings.above(0)}, problems)


@dataclass
class PruningSeeds:
    """One model of the grid whose tasks are pruned again under each of `seeds` (noise.csv): the pruner's spread."""

    model: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def __post_init__(self) -> None:
        settings.coerce_fields(self)
        problems = []
        if not self.model:
            problems.append("model is empty: name a model of the grid, e.g. w128_nz60k")
        if not self.seeds or len(set(self.seeds)) < len(self.seeds):
            problems.append(f"seeds={self.seeds} must list at least one seed, each once")
        settings.check(self, {}, problems)


SECTION_TYPES: dict[str, type] = {
    "model": SparseTransformerConfig,
    "train": TrainConfig,
    "grid": Grid,
    "prune": PruneConfig,
    "noise": PruningSeeds,
}


@dataclass(frozen=True)
class ModelPlan:
    """One model of the grid: its name, its width and the configs it trains with (`train.out_dir` is its run)."""

    name: str
    width: int
    model: SparseTransformerConfig
    train: TrainConfig


@dataclass(frozen=True)
class Sweep:
    """A checked sweep config: the models in grid order, the one pruning setting, the tasks and the tables' folder."""

    models: list[ModelPlan]
    prune: PruneConfig
    tasks: list[str]
    noise: PruningSeeds | None
    out: Path


# ------------------------------------------------------------------------------------------------ config


def load_sweep(path: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None) -> Sweep:
    """Read and check a sweep YAML (`SECTIONS`); `overrides` are "section.field=value" strings, `out` replaces
    the config's `out:`. Every problem of the grid is reported at once, before anything is trained."""
    raw = settings.read_sections(path, SECTIONS, overrides, overridable=list(SECTION_TYPES))

    def section(name: str) -> tuple[Any, str]:
        return settings.section_values(raw, name, SECTION_TYPES[name], overrides, path)

    base, source = section("model")
    settings.build(SparseTransformerConfig, base, source)  # types and unknown keys, before the grid sets any
    set_by_grid = sorted(set(base) & set(SET_BY_GRID))
    if set_by_grid:
        raise SettingsError(
            f"{source}: {set_by_grid} are set by the grid (d_model and n_heads by grid.widths, weight_l0 by "
            "grid.nonzero); remove them"
        )
    train_cfg = settings.build(TrainConfig, *section("train"))
    grid = settings.build(Grid, *section("grid"))
    prune_cfg = settings.build(PruneConfig, *section("prune"))
    noise_values, noise_source = section("noise")
    noise = settings.build(PruningSeeds, noise_values, noise_source) if noise_values else None
    task_names = top_level(raw, "tasks", list[str] | None, path) or list(tasks.PAPER_TASKS)
    missing = [name for name in task_names if name not in tasks.names()]
    if missing:
        raise SettingsError(f"{path}, tasks: no task named {missing}; tasks: {', '.join(tasks.names())}")
    models = expand_grid(base, train_cfg, grid, str(path))
    if noise is not None and noise.model not in [plan.name for plan in models]:
        raise SettingsError(
            f"{path}, noise: model={noise.model!r} is not in the grid; models: {', '.join(p.name for p in models)}"
        )
    out = out or top_level(raw, "out", str, path, default=DEFAULT_OUT)
    return Sweep(models, prune_cfg, list(dict.fromkeys(task_names)), noise, Path(out))


def top_level(raw: dict[str, Any], name: str, annotation: Any, path: str | Path, default: Any = None) -> Any:
    """The config's top-level value `name` as `annotation` says (`settings.coerce`), refused with the file named."""
    try:
        return settings.coerce(raw.get(name, default), annotation, name)
    except SettingsError as err:
        raise SettingsError(f"{path}: {err}") from None


def expand_grid(base: dict[str, Any], train_cfg: TrainConfig, grid: Grid, source: str) -> list[ModelPlan]:
    """One plan per width and budget (`w128_nz60k`), then the width's dense baseline (`w128_dense`). A budget
    above a width's hidden weights, or below what `min_weights_per_unit` keeps anyway, is refused."""
    plans, problems = [], []
    d_head = SparseTransformerConfig(**base).d_head
    runs = Path(train_cfg.out_dir)
    for width in grid.widths:
        if width % d_head:
            problems.append(f"grid.widths: {width} is not a multiple of model.d_head={d_head}; heads = width / d_head")
            continue
        shape = SparseTransformerConfig(**base, d_model=width, n_heads=width // d_head)
        hidden, floor = hidden_weight_counts(shape)
        for budget in grid.nonzero:
            if budget > hidden:
                problems.append(
                    f"grid.nonzero: {budget:,} is above the {hidden:,} hidden weights of width {width} (its dense "
                    f"count); lower the budget or drop width {width}"
                )
            elif budget < floor:
                problems.append(
                    f"grid.nonzero: {budget:,} is below the {floor:,} hidden weights width {width} keeps anyway "
                    f"(model.min_weights_per_unit={shape.min_weights_per_unit} per neuron and channel); raise the "
                    "budget or lower min_weights_per_unit"
                )
            else:
                name = f"w{width}_nz{budget // 1000}k" if budget % 1000 == 0 else f"w{width}_nz{budget}"
                model_cfg = dataclasses.replace(shape, weight_l0=budget / hidden)
                plans.append(ModelPlan(name, width, model_cfg, run_config(train_cfg, runs / name)))
        if grid.dense:
            name = f"w{width}_dense"
            run = run_config(train_cfg, runs / name, lr=grid.dense_lr or train_cfg.lr)
            plans.append(ModelPlan(name, width, SparseTransformerConfig.dense_twin(shape), run))
    if problems:
        raise SettingsError(f"{source}: " + "; ".join(problems))
    return plans


def run_config(train_cfg: TrainConfig, out_dir: Path, **changes: Any) -> TrainConfig:
    """The base training config for one model's run folder: resumed when it exists, one thread."""
    return dataclasses.replace(train_cfg, out_dir=str(out_dir), resume=True, overwrite=False, threads=1, **changes)


def hidden_weight_counts(cfg: SparseTransformerConfig) -> tuple[int, int]:
    """The weights in the hidden matrices (all but the embeddings) of a model of this shape, and how many of them
    `min_weights_per_unit` keeps whatever weight_l0 says (counted on a model without storage)."""
    with torch.device("meta"):
        model = SparseTransformer(cfg)
    hidden = floor = 0
    for name, (weight, axis) in model.weight_matrices().items():
        if name not in EMBEDDING_MATRICES:
            hidden += weight.numel()
            floor += weight.numel() // weight.shape[axis] * min(cfg.min_weights_per_unit, weight.shape[axis])
    return hidden, floor


# --------------------------------------------------------------------------------------------------- run


def run(sweep: Sweep, workers: int = 1, only: Sequence[str] = ()) -> list[str]:
    """Train and prune every model of the sweep (or those named in `only`) that has rows left to write, `workers`
    at a time in their own processes (in this one for a single worker). Returns one line per model that failed;
    the others go on."""
    unknown = sorted(set(only) - {plan.name for plan in sweep.models})
    if unknown:
        raise SettingsError(f"--only: no model named {unknown}; models: {', '.join(p.name for p in sweep.models)}")
    for name, columns in TABLES.items():
        tables.start_table(sweep.out / name, columns)
    pending = []
    for plan in sweep.models:
        if only and plan.name not in only:
            continue
        if has_work(sweep, plan):
            pending.append(plan)
        else:
            print(f"{plan.name}: every row is in {sweep.out}, skipped", flush=True)
    failures = []
    if workers == 1:
        for plan in pending:
            try:
                run_model(sweep, plan)
            except Exception as err:  # one model's failure (a diverged run, say) leaves the rest of the grid to run
                traceback.print_exc()
                failures.append(f"{plan.name}: {type(err).__name__}: {err}")
        return failures
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_model, sweep, plan): plan.name for plan in pending}
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as err:
                traceback.print_exc()
                failures.append(f"{futures[future]}: {type(err).__name__}: {err}")
    return failures


def has_work(sweep: Sweep, plan: ModelPlan) -> bool:
    """Whether any row of this model is missing from the tables."""
    if plan.name not in {row["model"] for row in tables.read_rows(sweep.out / MODELS_FILE)}:
        return True
    if sweep.noise is None or sweep.noise.model != plan.name:
        return False
    done = {(row["task"], row["seed"]) for row in tables.read_rows(sweep.out / NOISE_FILE) if row["model"] == plan.name}
    return any((task, str(seed)) not in done for task in sweep.tasks for seed in sweep.noise.seeds)


def run_model(sweep: Sweep, plan: ModelPlan) -> None:
    """Train one model (or resume its run, which for a finished run only loads it), prune the tasks missing from
    circuits.csv, write its models.csv row and, for the noise model, its missing noise.csv rows."""
    torch.set_num_threads(1)
    print(f"{plan.name}: training {plan.train.steps} steps in {plan.train.out_dir}", flush=True)
    model = train(plan.model, plan.train, progress=False).eval()
    pretraining_tokens = mean_ablation_tokens(model)
    circuits = sweep.out / CIRCUITS_FILE
    done = {row["task"] for row in tables.read_rows(circuits) if row["model"] == plan.name}
    for task in sweep.tasks:
        if task not in done:
            row = {"model": plan.name, "task": task, **circuit_row(model, task, sweep.prune, pretraining_tokens)}
            tables.append_rows(circuits, CIRCUIT_COLUMNS, [row])
            print(json.dumps(row), flush=True)
    if plan.name not in {row["model"] for row in tables.read_rows(sweep.out / MODELS_FILE)}:
        mine = [r for r in tables.read_rows(circuits) if r["model"] == plan.name and r["task"] in sweep.tasks]
        row = model_row(model, plan, mine)
        tables.append_rows(sweep.out / MODELS_FILE, MODEL_COLUMNS, [row])
        print(json.dumps(row), flush=True)
    if sweep.noise is not None and sweep.noise.model == plan.name:
        noise = sweep.out / NOISE_FILE
        done_seeds = {(row["task"], row["seed"]) for row in tables.read_rows(noise) if row["model"] == plan.name}
        for seed in sweep.noise.seeds:
            cfg = dataclasses.replace(sweep.prune, seed=seed)
            for task in sweep.tasks:
                if (task, str(seed)) not in done_seeds:
                    row = {"model": plan.name, "task": task, "seed": seed}
                    row |= circuit_row(model, task, cfg, pretraining_tokens)
                    tables.append_rows(noise, NOISE_COLUMNS, [row])
                    print(json.dumps(row), flush=True)


def circuit_row(model: SparseTransformer, task: str, cfg: PruneConfig, pretraining_tokens: Tensor) -> dict[str, Any]:
    """Prune one task, unless the full model misses the target on `SCREEN_PAIRS` held-out pairs: the columns of
    `CIRCUIT_COLUMNS` after model and task (circuit columns empty for an unsolved task)."""
    start = time.perf_counter()
    found: dict[str, Any] = {"nodes": "", "edges": "", "task_loss": ""}
    full_model_loss = task_scores(model, task, n_pairs=SCREEN_PAIRS)["loss"]
    if full_model_loss <= cfg.target_loss:
        circuit = prune(model, tasks.get(task), cfg, pretraining_tokens=pretraining_tokens, progress=False)
        full_model_loss = circuit.full_model_loss
        if full_model_loss <= cfg.target_loss:
            found = {"nodes": circuit.n_nodes, "edges": circuit.n_edges, "task_loss": round(circuit.task_loss, 5)}
    return found | {
        "full_model_loss": round(full_model_loss, 5),
        "solved": full_model_loss <= cfg.target_loss,
        "seconds": round(time.perf_counter() - start, 1),
    }


def model_row(model: SparseTransformer, plan: ModelPlan, circuits: list[dict[str, str]]) -> dict[str, Any]:
    """The `MODEL_COLUMNS` of a trained model whose circuits.csv rows (one per task of the sweep) are `circuits`."""
    solved = [row for row in circuits if row["solved"] == "True"]
    matrices = model.weight_matrices()
    return {
        "model": plan.name,
        "width": plan.width,
        "weight_l0": round(plan.model.weight_l0, 6),
        "nonzero_hidden": sum(int(w.count_nonzero()) for n, (w, _) in matrices.items() if n not in EMBEDDING_MATRICES),
        "nonzero_params": nonzero_weights(model),
        "total_params": sum(weight.numel() for weight, _ in matrices.values()),
        "tokens": plan.train.steps * plan.train.batch_size * plan.model.n_ctx,
        "val_loss": round(validation_loss(model, "real"), 4),
        "val_loss_synthetic": round(validation_loss(model, "synthetic"), 4),
        "tasks_solved": len(solved),
        "edges_geomean": round(geometric_mean([int(row["edges"]) for row in solved]), 1),
        "train_seconds": round(training_seconds(Path(plan.train.out_dir) / METRICS_FILE), 1),
        "prune_seconds": round(sum(float(row["seconds"]) for row in circuits), 1),
    }


def training_seconds(metrics_path: Path) -> float:
    """The trainer's time in training steps, from its metrics log: each row's tokens since the row before over the
    rate it logged (resumed runs keep the rows of their earlier part, so those count too)."""
    metrics = pd.read_csv(metrics_path)
    return float((metrics.tokens.diff().fillna(metrics.tokens) / metrics.tokens_per_s).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train a grid of widths and nonzero budgets (and dense baselines) and prune every task on each."
    )
    parser.add_argument("config", type=Path, help="sweep YAML, e.g. configs/frontier.yaml")
    parser.add_argument("--workers", type=int, default=1, help="models run at once, each in a one-thread process")
    parser.add_argument("--out", help="folder of the tables (overrides the config's out:)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these models of the grid")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="SECTION.FIELD=VALUE", help="override config values"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers} must be at least 1")
    try:
        failures = run(load_sweep(args.config, args.set, args.out), args.workers, args.only)
    except (SettingsError, ValueError) as err:  # a bad config, or a table with other columns: nothing has run
        raise SystemExit(f"circuitlab.sweep: error: {err}") from None
    if failures:
        raise SystemExit("circuitlab.sweep: these models failed (rerun to resume):\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
