"""The frontier's analysis (chapter 08): like-for-like task sets, trends, the pruner's spread, the search gap."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from circuitlab import frontier
from circuitlab.plotting import plot_frontier
from circuitlab.sweep import CIRCUIT_COLUMNS, MODEL_COLUMNS, NOISE_COLUMNS

# width, nonzero hidden weights, weight L0, validation loss (dense: L0 1)
MODELS = {
    "w64_nz30k": (64, 30000, 0.3, 4.40),
    "w64_nz60k": (64, 60000, 0.6, 4.37),
    "w128_nz30k": (128, 30117, 0.08, 4.25),
    "w128_nz60k": (128, 60000, 0.15, 4.20),
    "w128_dense": (128, 393216, 1.0, 4.07),
}
EDGES = {  # model -> task -> edges of its solved circuit (a task missing: unsolved)
    "w64_nz30k": {"a": 40, "b": 10},
    "w64_nz60k": {"a": 90, "b": 40, "c": 1000},
    "w128_nz30k": {"a": 20, "b": 5, "c": 2000},
    "w128_nz60k": {"a": 10, "b": 10},
    "w128_dense": {"a": 400, "b": 100, "c": 9000},
}


def write_tables(directory, noise_edges=None, search_trials=None):
    models = [
        {"model": name, "width": width, "weight_l0": l0, "nonzero_hidden": nonzero, "nonzero_params": nonzero + 100}
        | {"total_params": 3 * width**2, "tokens": 1000, "val_loss": loss, "val_loss_synthetic": 2.0}
        | {"tasks_solved": len(EDGES[name]), "edges_geomean": 1.0, "train_seconds": 1.0, "prune_seconds": 1.0}
        for name, (width, nonzero, l0, loss) in MODELS.items()
    ]
    circuits = [
        {"model": name, "task": task, "nodes": "", "edges": EDGES[name].get(task, ""), "task_loss": 0.1}
        | {"full_model_loss": 0.1 if task in EDGES[name] else 0.5, "solved": task in EDGES[name], "seconds": 1.0}
        for name in MODELS
        for task in "abcd"
    ]
    pd.DataFrame(models, columns=MODEL_COLUMNS).to_csv(directory / "models.csv", index=False)
    pd.DataFrame(circuits, columns=CIRCUIT_COLUMNS).to_csv(directory / "circuits.csv", index=False)
    if noise_edges is not None:
        noise = [
            {"model": "w128_nz60k", "task": task, "seed": seed, "edges": edges, "solved": edges is not None}
            for seed, per_task in noise_edges.items()
            for task, edges in per_task.items()
        ]
        pd.DataFrame(noise, columns=NOISE_COLUMNS).to_csv(directory / "noise.csv", index=False)
    for task, trials in (search_trials or {}).items():
        (directory / "search" / task).mkdir(parents=True)
        pd.DataFrame(trials).to_csv(directory / "search" / task / "trials.csv", index=False)
    return frontier.load(directory)


def test_models_gain_the_budget_their_name_gives_and_dense_ones_none(tmp_path):
    models = write_tables(tmp_path).models.set_index("model")
    assert models.loc["w128_nz30k", "budget"] == 30000 and models.loc["w64_nz60k", "budget"] == 60000
    assert models.loc["w128_dense", "dense"] and pd.isna(models.loc["w128_dense", "budget"])
    assert frontier.grid_budget("w64_nz4500") == 4500
    with pytest.raises(ValueError, match="model 'big' is not named as circuitlab.sweep names them"):
        frontier.grid_budget("big")


def test_points_average_over_the_tasks_every_compared_model_solves(tmp_path):
    tables = write_tables(tmp_path)
    points, tasks = frontier.frontier_points(tables)
    assert tasks == ["a", "b"]  # "c" is unsolved by two models, "d" by all
    assert points.set_index("model").shared_edges["w64_nz30k"] == pytest.approx(20.0)  # sqrt(40 * 10)
    points, tasks = frontier.frontier_points(tables, ["w128_nz30k", "w64_nz60k"])
    assert tasks == ["a", "b", "c"] and list(points.model) == ["w128_nz30k", "w64_nz60k"]  # in the order asked


def test_trends_compare_each_group_to_its_first_model_on_the_groups_shared_tasks(tmp_path):
    tables = write_tables(tmp_path)
    by_budget = frontier.trends(tables, "budget").set_index("model")
    assert list(by_budget.index) == ["w64_nz30k", "w128_nz30k", "w64_nz60k", "w128_nz60k"]  # the dense one left out
    assert by_budget.loc["w128_nz30k", "edge_ratio"] == pytest.approx(10 / 20)  # sqrt(20*5) / sqrt(40*10)
    assert by_budget.loc["w128_nz30k", "loss_ratio"] == pytest.approx(4.25 / 4.40)
    assert by_budget.loc["w64_nz30k", "edge_ratio"] == 1.0 and by_budget.shared_tasks.tolist() == [2, 2, 2, 2]
    by_width = frontier.trends(tables, "width").set_index("model")
    assert by_width.loc["w64_nz60k", "edge_ratio"] == pytest.approx(60 / 20)  # sqrt(90*40) / sqrt(40*10)
    with pytest.raises(ValueError, match="fixed='depth': choose one of"):
        frontier.trends(tables, "depth")


def test_sparse_vs_dense_pairs_each_sparse_model_with_the_dense_one_of_its_width(tmp_path):
    table = frontier.sparse_vs_dense(write_tables(tmp_path)).set_index("sparse")
    assert list(table.index) == ["w128_nz30k", "w128_nz60k"]  # width 64 has no dense baseline here
    assert table.loc["w128_nz30k", "shared_tasks"] == 3
    assert table.loc["w128_nz60k", "dense_over_sparse"] == pytest.approx(200 / 10)  # sqrt(400*100) / sqrt(10*10)


def test_pruning_spread_is_largest_over_smallest_seed_over_tasks_solved_under_every_seed(tmp_path):
    noise = {0: {"a": 10, "b": 10, "c": 500}, 1: {"a": 20, "b": 20, "c": None}, 2: {"a": 10, "b": 40, "c": 100}}
    spread = frontier.pruning_spread(write_tables(tmp_path, noise).noise)
    assert spread.tasks.tolist() == [2, 2, 2]  # "c" is unsolved under seed 1
    assert spread.edges.tolist() == pytest.approx([10, 20, 20])
    assert spread.spread.tolist() == pytest.approx([2.0, 2.0, 2.0])
    assert frontier.pruning_spread(pd.DataFrame()).empty  # a sweep without a noise: section


def test_search_gap_compares_the_base_trial_with_the_chosen_one(tmp_path):
    trials = {
        "a": {"trial": [0, 1, 2], "edges": [120, 60, 80], "test_loss": [0.1, 0.14, 0.12]}
        | {"feasible": [True, True, True], "chosen": [False, True, False]}
    }
    write_tables(tmp_path, search_trials=trials)
    gap = frontier.search_gap(tmp_path)
    assert gap.to_dict("records") == [
        {"task": "a", "trials": 3, "feasible": 3, "fixed_edges": 120, "searched_edges": 60}
        | {"fixed_test_loss": 0.1, "searched_test_loss": 0.14, "fixed_over_searched": 2.0}
    ]
    assert frontier.search_gap(tmp_path / "elsewhere").empty


def test_a_folder_without_the_tables_names_them_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no models.csv or circuits.csv: run `python -m circuitlab.sweep"):
        frontier.load(tmp_path)


def test_the_frontier_plot_draws_every_model_and_the_error_bar(tmp_path):
    tables = write_tables(tmp_path, {0: {"a": 10}, 1: {"a": 20}})
    points, _ = frontier.frontier_points(tables)
    ax = plot_frontier(points, "shared_edges", frontier.pruning_spread(tables.noise))
    labels = {text.get_text() for text in ax.texts}
    assert labels == set(MODELS)
    assert len(ax.containers) == 1  # the noise model's error bar
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "width 64 (12,288 params)",
        "width 128 (49,152 params)",
    ]
