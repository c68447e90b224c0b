"""The shipped models and circuits in data/ do what the README and data/checkpoints/README.md say."""

import json
import math
import shutil

import pandas as pd
import pytest
import torch

from circuitlab import SparseTransformer, frontier, tasks
from circuitlab.checkpoint import CheckpointError
from circuitlab.circuit import Circuit, load_circuits
from circuitlab.compare import fresh_loss
from circuitlab.evaluate import task_scores
from circuitlab.masks import ablation_values
from circuitlab.paths import CHECKPOINTS_DIR, CIRCUITS_DIR, CONTROLS_DIR
from circuitlab.prune import mean_ablation_tokens, report_pairs

# The sparse model's circuit folders: the defaults with three seeds, the searched settings with three seeds.
SPARSE_CIRCUITS = (
    *("sparse", "sparse_seed1", "sparse_seed2"),
    *("sparse_searched", "sparse_searched_seed1", "sparse_searched_seed2"),
)


@pytest.fixture(scope="module")
def sparse() -> SparseTransformer:
    return SparseTransformer.from_pretrained(CHECKPOINTS_DIR / "sparse")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "accuracy"),
    # The models were trained on set_or_string without a second variable (set_or_string_one_var); the paper's
    # form, with one, they do not solve (see the README).
    [("single_double_quote", 0.98), ("bracket_counting", 0.95), ("set_or_string_one_var", 0.9)],
)
def test_the_sparse_model_solves_the_case_studies(sparse, task, accuracy):
    scores = task_scores(sparse, task, n_pairs=200)
    assert scores["accuracy"] >= accuracy and scores["loss"] < 0.15


def test_the_models_reach_a_comparable_loss_on_the_same_mix():
    configs = {
        name: json.loads((CHECKPOINTS_DIR / name / "train_config.json").read_text()) for name in ("sparse", "dense")
    }
    assert configs["sparse"]["synthetic_fraction"] == configs["dense"]["synthetic_fraction"]
    final = {name: pd.read_csv(CHECKPOINTS_DIR / name / "metrics.csv").val_loss.dropna().iloc[-1] for name in configs}
    assert abs(final["sparse"] - final["dense"]) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize(("model", "folders"), [("sparse", SPARSE_CIRCUITS), ("dense", ("dense",))])
def test_every_shipped_circuit_ablates_to_its_models_one_text_sample(model, folders):
    # Whatever the pruning seed: chapter 02's seeds differ in pairs and initial scores, not in ablation constants.
    pruned = SparseTransformer.from_pretrained(CHECKPOINTS_DIR / model)
    expected = ablation_values(pruned, "mean", mean_ablation_tokens(pruned))
    for folder in folders:
        circuits = load_circuits(CIRCUITS_DIR / folder)
        assert circuits, folder
        for name, circuit in circuits.items():
            for node, value in expected.items():
                assert torch.allclose(circuit.ablation_values[node], value, atol=1e-5), (folder, name, node)


@pytest.mark.slow
def test_shipped_circuits_hold_on_the_pairs_kept_for_reporting(sparse):
    circuits = load_circuits(CIRCUITS_DIR / "sparse", sparse)  # recomputing the edges checks the model matches
    assert all(name in tasks.names() for name in circuits)
    circuit = circuits["single_double_quote"]
    task = tasks.get("single_double_quote")
    held_out = report_pairs(circuit, task, sparse.tokenizer, n_ctx=sparse.cfg.n_ctx)
    assert circuit.n_nodes <= 64 and circuit.n_edges <= 46  # the paper's released (uncleaned) result: 64 / 46
    assert circuit.task_loss <= 0.15
    assert circuit.loss(sparse, held_out) == pytest.approx(circuit.task_loss, abs=1e-4)
    assert circuit.loss(sparse, held_out, invert=True) >= math.log(2) - 0.01  # ablating it: chance or worse
    fresh = task.batch(sparse.tokenizer, "test", 300, seed=7, n_ctx=sparse.cfg.n_ctx)
    assert circuit.loss(sparse, fresh) < 0.2  # other fresh pairs (some may overlap the pruning's draw)


@pytest.mark.slow
def test_every_circuit_pruned_with_check_pairs_holds_on_fresh_pairs_and_is_necessary(sparse):
    # The check pairs exist so that a circuit chosen on the selection pairs also holds where nothing chose it.
    # Judged on 2,000 fresh pairs: a loss over the 400 test pairs moves by a few hundredths from draw to draw (string
    # closing's seed 1 holds on its own by a hair, 0.148, and at 0.112 on fresh ones; an earlier one missed, 0.162).
    # Necessity (stage 5 aims at chance on the selection and check pairs, or at the loss of ablating every node where
    # that is lower: else_elif, which the bigram table answers) is reported on the test pairs.
    checked = [
        circuit
        for folder in SPARSE_CIRCUITS
        for circuit in load_circuits(CIRCUITS_DIR / folder, sparse).values()
        if circuit.config.get("check_pairs")
    ]
    assert len(checked) >= 3
    for circuit in checked:
        held_out = report_pairs(circuit, tasks.get(circuit.task_name), sparse.tokenizer, n_ctx=sparse.cfg.n_ctx)
        assert circuit.loss(sparse, held_out) == pytest.approx(circuit.task_loss, abs=1e-4)
        assert fresh_loss(circuit, sparse, n_pairs=2000) <= circuit.target_loss, circuit.task_name
        goal = min(tasks.CHANCE_LOSS, circuit.ablated_model_loss)
        assert circuit.loss(sparse, held_out, invert=True) >= goal - 0.01, circuit.task_name


def test_a_foreign_config_over_the_shipped_weights_is_refused(tmp_path):
    copy = shutil.copytree(CHECKPOINTS_DIR / "sparse", tmp_path / "sparse")
    shutil.copy(CHECKPOINTS_DIR / "dense" / "config.json", copy / "config.json")  # same shapes, AbsTopK off
    with pytest.raises(CheckpointError, match=r"config\.json does not belong to .*afrac"):
        SparseTransformer.from_pretrained(copy)


def test_the_shipped_controls_stay_at_chance_and_the_method_does_not():
    table = pd.read_csv(CONTROLS_DIR / "sparse" / "controls.csv", index_col="control")
    shipped = Circuit.load(CIRCUITS_DIR / "sparse" / "single_double_quote")
    method = table.loc["mean ablation (the method)"]
    assert (method.nodes, method.edges) == (shipped.n_nodes, shipped.n_edges)  # the shipped run stands for it
    assert method.task_loss == pytest.approx(shipped.task_loss, abs=1e-4) and method.trained_calibrated_loss < 0.15
    for control in ("random model", "nonsense task"):
        assert table.loc[control, "task_loss"] >= math.log(2) - 0.01
        assert table.loc[control, "trained_calibrated_loss"] >= math.log(2) - 0.01


def test_the_shipped_attribution_baseline_needs_more_edges_at_every_target():
    curve = pd.read_csv(CONTROLS_DIR / "sparse" / "edges_vs_loss.csv").pivot(
        index="target_loss", columns="method", values="edges"
    )
    assert len(curve) == 4 and (curve.attribution > curve.learned).all()


def test_the_shipped_size_table_covers_every_target_and_cleanup_only_shrinks_circuits():
    sizes = pd.read_csv(CIRCUITS_DIR / "size_vs_target.csv")
    assert set(sizes.model) == {"sparse", "dense"} and set(sizes.target_loss) == {0.05, 0.1, 0.15, 0.3}
    assert (sizes.groupby(["model", "task"]).size() == 4).all()
    for model, circuits in {name: load_circuits(CIRCUITS_DIR / name) for name in ("sparse", "dense")}.items():
        uncleaned = sizes[(sizes.model == model) & (sizes.target_loss == 0.15)].set_index("task").edges
        for task, circuit in circuits.items():
            if task in uncleaned and circuit.search.get("removed_by_cleanup", 0):
                assert circuit.n_edges <= uncleaned[task]  # the same search, then cleanup


def test_the_shipped_frontier_is_the_whole_grid_and_its_trends_exceed_the_pruners_noise():
    tables = frontier.load()
    models = tables.models.set_index("model")
    assert (~models.dense).sum() == 9 and models.dense.sum() == 3 and models.width.nunique() == 3
    assert (tables.circuits.groupby("model").task.nunique() == len(tasks.PAPER_TASKS)).all()
    by_budget = frontier.trends(tables, "budget")
    for _, group in by_budget.groupby("budget"):  # chapter 08, trend 1: at fixed nonzeros, wider is better...
        assert group.val_loss.is_monotonic_decreasing and group.edge_ratio.iloc[-1] < 1  # ...on both axes
    spread = frontier.pruning_spread(tables.noise).spread.max()
    assert spread < 1.1 and spread < 1 / by_budget.edge_ratio.min()
    assert (frontier.sparse_vs_dense(tables).dense_over_sparse > 2).all()
