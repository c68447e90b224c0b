"""Comparing circuits: across models, across seeds, and size against target loss (the paper's Figure 2)."""

import pandas as pd
import pytest
import torch

from circuitlab import SparseTransformer, tasks
from circuitlab.circuit import Circuit
from circuitlab.compare import FRESH_SEED, fresh_loss, geometric_mean, seed_spread, size_comparison, size_vs_target
from circuitlab.paths import CHECKPOINTS_DIR, CIRCUITS_DIR


def counted_circuit(name: str, n_nodes: int, n_edges: int, task_loss: float) -> Circuit:
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:n_nodes] = True
    return Circuit(name, {"blocks.0.mlp.hook_post": mask}, {}, "mean", 0.15, task_loss, 0.0, 0.7, saved_n_edges=n_edges)


def test_size_comparison_is_the_geometric_mean_over_tasks_both_models_solve():
    sparse = {
        "a": counted_circuit("a", 2, 10, 0.1),
        "b": counted_circuit("b", 4, 20, 0.1),
        "c": counted_circuit("c", 1, 1, 0.1),
    }
    dense = {
        "a": counted_circuit("a", 8, 40, 0.1),
        "b": counted_circuit("b", 8, 1280, 0.1),
        "c": counted_circuit("c", 64, 9, 0.5),
    }
    table, ratio = size_comparison(sparse, dense)
    assert list(table.solved) == [True, True, False]  # the dense model misses the target on "c"
    assert list(table.edge_ratio) == [4.0, 64.0, 9.0] and list(table.node_ratio) == [4.0, 2.0, 64.0]
    assert ratio == pytest.approx(16.0)  # sqrt(4 * 64): "c" is left out
    sparse["d"], dense["d"] = counted_circuit("d", 0, 0, 0.0), counted_circuit("d", 0, 0, 0.0)  # e.g. else_elif
    table, ratio = size_comparison(sparse, dense)
    assert table.set_index("task").loc["d", "edge_ratio"] == 1.0 and ratio == pytest.approx(16.0 ** (2 / 3))


def test_seed_spread_is_largest_over_smallest_over_tasks_every_run_pruned():
    runs = {
        "seed 0": {"a": counted_circuit("a", 10, 20, 0.1), "b": counted_circuit("b", 5, 5, 0.1)},
        "seed 1": {"a": counted_circuit("a", 15, 40, 0.2), "b": counted_circuit("b", 5, 6, 0.1)},
        "seed 2": {"a": counted_circuit("a", 12, 30, 0.1)},  # "b" missing: left out
    }
    table = seed_spread(runs)
    assert list(table.index) == ["a"]
    assert table.loc["a", "edge_ratio"] == 2.0 and table.loc["a", "node_ratio"] == 1.5
    assert table.loc["a", "seed 1 edges"] == 40 and not table.loc["a", "all_hold"]  # seed 1 misses 0.15


def test_size_vs_target_averages_over_tasks_both_full_models_solve_at_each_target():
    rows = [  # model, task, target, edges, full-model loss
        ("sparse", "a", 0.1, 10, 0.05), ("dense", "a", 0.1, 160, 0.05),
        ("sparse", "b", 0.1, 40, 0.2), ("dense", "b", 0.1, 99, 0.05),  # sparse misses 0.1 on "b"
        ("sparse", "a", 0.3, 4, 0.05), ("dense", "a", 0.3, 16, 0.05),
        ("sparse", "b", 0.3, 25, 0.2), ("dense", "b", 0.3, 400, 0.05),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["model", "task", "target_loss", "edges", "full_model_loss"])
    summary = size_vs_target(table)
    assert list(summary.index) == [0.1, 0.3] and list(summary.tasks) == [1, 2]
    assert summary.loc[0.1, "dense / sparse"] == pytest.approx(16.0)
    assert summary.loc[0.3, "sparse edges"] == pytest.approx(10.0)  # sqrt(4 * 25)
    assert summary.loc[0.3, "dense / sparse"] == pytest.approx(geometric_mean([4, 16]))


def test_a_circuit_of_no_edges_counts_as_one_in_the_geometric_mean():
    assert geometric_mean([0, 16]) == pytest.approx(4.0) and geometric_mean([]) != geometric_mean([])


def test_fresh_loss_weighs_each_draw_by_its_pairs_and_seed_spread_reports_it():
    model = SparseTransformer.from_pretrained(CHECKPOINTS_DIR / "sparse")
    circuit = Circuit.load(CIRCUITS_DIR / "sparse" / "single_double_quote", model)
    task = tasks.get(circuit.task_name)
    draws = [
        task.batch(model.tokenizer, "test", n, seed=FRESH_SEED + i, n_ctx=model.cfg.n_ctx)
        for i, n in ((0, 40), (1, 20))
    ]
    expected = (40 * circuit.loss(model, draws[0]) + 20 * circuit.loss(model, draws[1])) / 60
    assert fresh_loss(circuit, model, n_pairs=60, chunk=40) == pytest.approx(expected)
    table = seed_spread({"seed 0": {"q": circuit}}, model, fresh_pairs=60)
    assert table.loc["q", "seed 0 fresh loss"] == pytest.approx(round(fresh_loss(circuit, model, 60), 4))
