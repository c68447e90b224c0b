"""Circuits compared: one task in two models, one task over seeds of the pruner, and circuit size against the
target loss (the paper's Figure 2). Sizes are averaged over tasks as the paper does, by a geometric mean."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuitlab import tasks
from circuitlab.circuit import Circuit
from circuitlab.model import SparseTransformer


def geometric_mean(sizes) -> float:
    """The geometric mean of circuit sizes, a size of 0 counted as 1 (a task the model does with no edges at
    all, e.g. from its bigram table alone, would otherwise make the mean 0); NaN for no sizes."""
    sizes = np.clip(np.asarray(sizes, dtype=float), 1, None)
    return float(np.exp(np.log(sizes).mean())) if len(sizes) else float("nan")


def size_comparison(sparse: dict[str, Circuit], dense: dict[str, Circuit]) -> tuple[pd.DataFrame, float]:
    """Nodes and edges per task for two models, and the geometric mean of dense/sparse edge ratios over
    the tasks both models' circuits solve (task loss at most the target)."""
    rows = []
    for name in sorted(set(sparse) & set(dense)):
        s, d = sparse[name], dense[name]
        rows.append(
            {
                "task": name,
                "sparse_nodes": s.n_nodes,
                "sparse_edges": s.n_edges,
                "dense_nodes": d.n_nodes,
                "dense_edges": d.n_edges,
                "solved": s.task_loss <= s.target_loss and d.task_loss <= d.target_loss,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table, float("nan")
    for size in ("nodes", "edges"):  # a circuit of size 0 counts as 1, as in `geometric_mean`
        table[f"{size[:-1]}_ratio"] = table[f"dense_{size}"].clip(lower=1) / table[f"sparse_{size}"].clip(lower=1)
    return table, geometric_mean(table[table.solved].edge_ratio)


FRESH_SEED = 10_000  # pair draws no pruning run uses (runs draw theirs with their own seed, 0, 1, 2, ...)


def fresh_loss(circuit: Circuit, model: SparseTransformer, n_pairs: int = 2000, chunk: int = 400) -> float:
    """The circuit's task loss on `n_pairs` freshly drawn pairs of its task's test split, in draws of `chunk`
    pairs (seeds from `FRESH_SEED` on): a check on the 400 test pairs a circuit reports, which move from draw to
    draw by a few hundredths on their own."""
    task, losses = tasks.get(circuit.task_name), []
    for i, start in enumerate(range(0, n_pairs, chunk)):
        size = min(chunk, n_pairs - start)
        batch = task.batch(model.tokenizer, "test", size, seed=FRESH_SEED + i, n_ctx=model.cfg.n_ctx)
        losses.append(circuit.loss(model, batch) * size)
    return sum(losses) / n_pairs


def seed_spread(
    runs: dict[str, dict[str, Circuit]], model: SparseTransformer | None = None, fresh_pairs: int = 2000
) -> pd.DataFrame:
    """One row per task pruned in every run (`runs`: label -> task -> circuit, e.g. one label per seed): each run's
    nodes, edges and held-out loss (and, given the `model`, its `fresh_loss` on `fresh_pairs` pairs), the largest
    over the smallest size, and whether every run met its target on its test pairs."""
    labels = list(runs)
    shared = sorted(set.intersection(*(set(circuits) for circuits in runs.values()))) if runs else []
    rows = []
    for task in shared:
        circuits = [runs[label][task] for label in labels]
        row: dict[str, object] = {"task": task}
        for label, circuit in zip(labels, circuits, strict=True):
            row |= {f"{label} nodes": circuit.n_nodes, f"{label} edges": circuit.n_edges}
            row[f"{label} loss"] = round(circuit.task_loss, 4)
            if model is not None:
                row[f"{label} fresh loss"] = round(fresh_loss(circuit, model, fresh_pairs), 4)
        nodes, edges = [c.n_nodes for c in circuits], [c.n_edges for c in circuits]
        row["node_ratio"] = max(nodes) / max(1, min(nodes))
        row["edge_ratio"] = max(edges) / max(1, min(edges))
        row["all_hold"] = all(c.task_loss <= c.target_loss for c in circuits)
        rows.append(row)
    return pd.DataFrame(rows).set_index("task") if rows else pd.DataFrame()


def size_vs_target(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's Figure 2 from a `make_circuits --targets` table (one row per model, task and target): for each
    target, the tasks every model's full model solves (held-out loss at most the target), the geometric-mean
    edges of each model's circuits over them, and each model's ratio to the first model listed (e.g. dense /
    sparse when the sparse model's rows come first). One row per target loss."""
    models = list(dict.fromkeys(table.model))
    rows = []
    for target, at_target in table.groupby("target_loss", sort=True):
        solved = at_target.pivot(index="task", columns="model", values="full_model_loss").le(target).all(axis=1)
        tasks = sorted(solved[solved].index)
        edges = at_target[at_target.task.isin(tasks)].pivot(index="task", columns="model", values="edges")
        mean = {model: geometric_mean(edges[model]) if model in edges else float("nan") for model in models}
        rows.append(
            {"target_loss": target, "tasks": len(tasks)}
            | {f"{model} edges": mean[model] for model in models}
            | {f"{model} / {models[0]}": mean[model] / mean[models[0]] for model in models[1:]}
        )
    return pd.DataFrame(rows).set_index("target_loss")
