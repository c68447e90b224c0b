"""The capability-interpretability frontier (the paper's Figure 3) read from a sweep's tables (`circuitlab.sweep`).

Each model is a point: its validation loss (capability, x) and the geometric mean of its circuits' edges at the
target loss (interpretability, y; smaller is better). The paper's models all solve its tasks; ours, at CPU scale,
each solve a different handful, and a mean over different tasks compares different things. So every comparison
here is made over the tasks *all* the compared models solve (`frontier_points`), and says how many those are.

    tables = frontier.load("data/frontier")
    frontier.trends(tables, "budget")                           # fixed nonzero weights: vary the width
    frontier.pruning_spread(tables.noise)                       # the pruner's own noise, for error bars
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from circuitlab.compare import geometric_mean
from circuitlab.paths import DATA_DIR

FRONTIER_DIR = DATA_DIR / "frontier"
GROUPINGS = {"budget": "width", "width": "budget"}  # a trend holds one of these fixed and varies the other


@dataclass(frozen=True)
class FrontierTables:
    """A sweep's three tables (see `circuitlab.sweep`): one row per model, per model and task, and per pruning seed
    of the noise model's tasks. `models` gains `dense` and `budget`, the nonzero hidden weights the grid asked
    for (read from the model's name, `w256_nz30k`; NaN for a dense model). `nonzero_hidden` is what training kept:
    above the budget where `min_weights_per_unit` keeps more (e.g. 32,211 for `w256_nz30k`)."""

    models: pd.DataFrame
    circuits: pd.DataFrame
    noise: pd.DataFrame


def load(directory: str | Path = FRONTIER_DIR) -> FrontierTables:
    """Read `models.csv`, `circuits.csv` and `noise.csv` from a sweep's output folder."""
    directory = Path(directory)
    missing = [name for name in ("models.csv", "circuits.csv") if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} has no {' or '.join(missing)}: run `python -m circuitlab.sweep configs/frontier.yaml` "
            "(or point at the folder a sweep's `out:` names)"
        )
    models = pd.read_csv(directory / "models.csv")
    models["dense"] = models.weight_l0 >= 1
    models["budget"] = models.model.map(grid_budget)
    noise_path = directory / "noise.csv"
    noise = pd.read_csv(noise_path) if noise_path.is_file() else pd.DataFrame(columns=["model", "task", "seed"])
    return FrontierTables(models, pd.read_csv(directory / "circuits.csv"), noise)


def grid_budget(name: str) -> float:
    """The nonzero budget in a sweep model's name (`w128_nz60k` -> 60000, `w64_nz4500` -> 4500); NaN for a dense
    baseline (`w128_dense`)."""
    match = re.fullmatch(r"w\d+_nz(\d+)(k?)", name)
    if match is None:
        if not re.fullmatch(r"w\d+_dense", name):
            raise ValueError(f"model {name!r} is not named as circuitlab.sweep names them (w128_nz60k, w128_dense)")
        return float("nan")
    return float(int(match[1]) * (1000 if match[2] else 1))


def solved_edges(circuits: pd.DataFrame, columns: str = "model") -> pd.DataFrame:
    """Edges of every solved circuit as a task x `columns` table (a circuits.csv: one column per model; a
    noise.csv of one model: per seed), NaN where the task is not solved."""
    solved = circuits[circuits.solved.astype(str) == "True"]
    return solved.pivot(index="task", columns=columns, values="edges").astype(float)


def frontier_points(tables: FrontierTables, models=None) -> tuple[pd.DataFrame, list[str]]:
    """One row per model (all, or those named): its models.csv columns and `shared_edges`, the geometric-mean
    edges over the tasks every one of these models solves; and those tasks."""
    points = tables.models if models is None else tables.models.set_index("model").loc[list(models)].reset_index()
    edges = solved_edges(tables.circuits).reindex(columns=list(points.model))
    tasks = sorted(edges.index[edges.notna().all(axis=1)])
    points = points.assign(shared_edges=[geometric_mean(edges.loc[tasks, name]) for name in points.model])
    return points.reset_index(drop=True), tasks


def trends(tables: FrontierTables, fixed: str) -> pd.DataFrame:
    """The sparse models grouped by `fixed` ("budget": same nonzero weights, wider models; "width": same total
    size, more nonzero weights), each group ordered by the other: validation loss and geometric-mean edges over
    the tasks the whole group solves, each as a ratio to the group's first model (ratios below 1: the larger
    width, or budget, did better)."""
    if fixed not in GROUPINGS:
        raise ValueError(f"fixed={fixed!r}: choose one of {list(GROUPINGS)}")
    varied, groups = GROUPINGS[fixed], []
    sparse = tables.models[~tables.models.dense]
    for _, group in sparse.groupby(fixed, sort=True):
        points, tasks = frontier_points(tables, group.sort_values(varied).model)
        groups.append(
            points.assign(
                loss_ratio=points.val_loss / points.val_loss.iloc[0],
                shared_tasks=len(tasks),
                edges=points.shared_edges.round(1),
                edge_ratio=points.shared_edges / points.shared_edges.iloc[0],
            )
        )
    columns = [fixed, varied, "model", "val_loss", "loss_ratio", "shared_tasks", "edges", "edge_ratio"]
    if not groups:  # a sweep of dense models only
        return pd.DataFrame(columns=columns)
    return pd.concat(groups, ignore_index=True).astype({fixed: int, varied: int})[columns]


def pruning_spread(noise: pd.DataFrame) -> pd.DataFrame:
    """The pruner's own spread on one model (`noise.csv`): per seed, the geometric-mean edges over the tasks solved
    under every seed, and their count; `spread` (largest / smallest over seeds) on every row."""
    if noise.empty:
        return pd.DataFrame(columns=["model", "seed", "tasks", "edges", "spread"])
    rows = []
    for model, runs in noise.groupby("model"):
        solved = solved_edges(runs, columns="seed")
        tasks = solved.dropna().index
        for seed in solved.columns:
            rows.append(
                {"model": model, "seed": seed, "tasks": len(tasks), "edges": geometric_mean(solved.loc[tasks, seed])}
            )
    table = pd.DataFrame(rows)
    table["spread"] = table.groupby("model").edges.transform(lambda edges: edges.max() / edges.min())
    return table


def sparse_vs_dense(tables: FrontierTables) -> pd.DataFrame:
    """Each sparse model against the dense baseline of its width: geometric-mean edges of both over the tasks both
    solve, and dense / sparse (the paper's Figure 2 ratio, per model)."""
    rows = []
    for width, group in tables.models.groupby("width"):
        for dense in group[group.dense].model:
            for sparse in group[~group.dense].model:
                points, tasks = frontier_points(tables, [sparse, dense])
                sparse_edges, dense_edges = points.shared_edges
                rows.append(
                    {"width": width, "sparse": sparse, "dense": dense, "shared_tasks": len(tasks)}
                    | {"sparse_edges": round(sparse_edges, 1), "dense_edges": round(dense_edges, 1)}
                    | {"dense_over_sparse": dense_edges / sparse_edges}
                )
    return pd.DataFrame(rows)


def search_gap(directory: str | Path = FRONTIER_DIR) -> pd.DataFrame:
    """How far the sweep's one pruning setting lands from a per-task search (`circuitlab.search` run with that
    setting as its base trial, saved under `<directory>/search/<task>/trials.csv`): per task, the base trial's
    and the chosen trial's edges and held-out loss, their ratio, and the trials run. Empty without a search."""
    rows = []
    for trials_path in sorted(Path(directory).glob("search/*/trials.csv")):
        trials = pd.read_csv(trials_path)
        base, best = trials[trials.trial == 0].iloc[0], trials[trials.chosen].iloc[0]
        rows.append(
            {"task": trials_path.parent.name, "trials": len(trials), "feasible": int(trials.feasible.sum())}
            | {"fixed_edges": base.edges, "searched_edges": best.edges}
            | {"fixed_test_loss": base.test_loss, "searched_test_loss": best.test_loss}
            | {"fixed_over_searched": max(base.edges, 1) / max(best.edges, 1)}
        )
    return pd.DataFrame(rows)
