"""The handbook's figures: each draws exactly the numbers it is given, on the axes it says."""

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from circuitlab.compare import size_vs_target
from circuitlab.plotting import (
    plot_last_token_attention,
    plot_schedules,
    plot_search_trials,
    plot_size_vs_target,
    plot_training_curves,
    plot_weight_sparsity,
)
from circuitlab.train import TrainConfig, schedule_table


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def metrics(steps: int, eval_every: int, seed: int) -> pd.DataFrame:
    """A run's metrics.csv as `train` writes it: every row has the training columns, evaluated rows the rest."""
    rng = np.random.default_rng(seed)
    step = np.arange(1, steps + 1)
    evaluated = step % eval_every == 0
    return pd.DataFrame(
        {
            "step": step,
            "tokens": step * 512,
            "train_loss": 7 - np.log(step) + rng.normal(0, 0.1, steps),
            "val_loss": np.where(evaluated, 7.2 - np.log(step), np.nan),
            "l0": np.maximum(0.125, 1 - step / steps),
            "dead_neurons": np.where(evaluated, rng.uniform(0, 0.2, steps), np.nan),
            "lr": 1e-2 * (1 - step / (steps + 1)),
        }
    )


def test_training_curves_plot_every_run_and_only_evaluated_rows_for_validation():
    runs = {"sparse": metrics(40, 10, seed=0), "dense": metrics(20, 5, seed=1)}
    loss, l0, lr, dead = plot_training_curves(runs).axes
    lines = {(ax, line.get_label()): line for ax in (loss, l0, lr, dead) for line in ax.get_lines()}
    for label, frame in runs.items():
        evaluated = frame.dropna(subset=["val_loss"])
        np.testing.assert_array_equal(lines[loss, f"{label} train"].get_ydata(), frame.train_loss)
        np.testing.assert_array_equal(lines[loss, f"{label} val"].get_xdata(), evaluated.tokens)
        np.testing.assert_array_equal(lines[loss, f"{label} val"].get_ydata(), evaluated.val_loss)
        np.testing.assert_array_equal(lines[l0, label].get_ydata(), frame.l0)
        np.testing.assert_array_equal(lines[lr, label].get_xdata(), frame.tokens)
        np.testing.assert_array_equal(lines[lr, label].get_ydata(), frame.lr)
        np.testing.assert_array_equal(lines[dead, label].get_ydata(), evaluated.dead_neurons)
    assert len(lines) == 10  # two lines of loss and one of each other curve, per run
    assert l0.get_yscale() == "log" and loss.get_xlabel() == "tokens"
    assert [text.get_text() for text in dead.get_legend().get_texts()] == ["sparse", "dense"]


def test_schedules_plot_the_recipe_the_trainer_follows(tiny_config):
    schedule = schedule_table(dataclasses.replace(tiny_config, weight_l0=0.125), TrainConfig(steps=200, lr=2e-2))
    l0_ax, lr_ax = plot_schedules(schedule).axes
    np.testing.assert_array_equal(l0_ax.get_lines()[0].get_ydata(), schedule.l0)
    np.testing.assert_array_equal(lr_ax.get_lines()[0].get_ydata(), schedule.lr)
    assert schedule.l0.iloc[0] == 1 and schedule.l0.iloc[-1] == 0.125  # dense at first, the target by the end
    peak = schedule.lr.idxmax()
    assert schedule.l0.iloc[peak] == 0.125  # the sharkfin: the rate peaks once L0 has reached its target


def test_weight_sparsity_shows_the_nonzero_pattern_and_every_weight(tiny_model):
    weight = tiny_model.blocks[0].mlp.W_in
    with torch.no_grad():
        weight[:, ::3] = 0  # a third of the neurons lose every input
    histogram, pattern = plot_weight_sparsity(weight, "blocks.0.mlp.W_in", max_units=40).axes
    image = pattern.get_images()[0].get_array()
    assert image.shape == (weight.shape[0], 40)
    np.testing.assert_array_equal(image, (weight[:, :40] != 0).numpy())
    assert sum(patch.get_height() for patch in histogram.patches) == weight.numel()
    assert pattern.get_title() == "nonzero pattern (first 40 neurons)" and pattern.get_ylabel() == "residual channel"


def test_last_token_attention_shows_every_head_over_every_position(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (1, 9), generator=torch.Generator().manual_seed(0))
    fig = plot_last_token_attention(tiny_model, tokens)
    _, cache = tiny_model.run_with_cache(tokens)
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, cache["pattern", 1][0, :, -1].numpy())
    assert len(fig.axes[0].get_xticklabels()) == 9


def test_size_vs_target_draws_one_line_per_model_at_the_mean_edges():
    rows = [("sparse", "a", t, e, 0.01) for t, e in ((0.1, 10), (0.3, 4))]
    rows += [("dense", "a", t, e, 0.01) for t, e in ((0.1, 100), (0.3, 40))]
    table = pd.DataFrame(rows, columns=["model", "task", "target_loss", "edges", "full_model_loss"])
    ax = plot_size_vs_target(size_vs_target(table))
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"sparse", "dense"}
    np.testing.assert_allclose(lines["dense"].get_xdata(), [100, 40])
    np.testing.assert_allclose(lines["dense"].get_ydata(), [0.1, 0.3])


def test_search_trials_marks_each_outcome_and_steps_down_to_the_chosen_trial():
    trials = pd.DataFrame(
        {
            "trial": [2, 0, 4, 1, 3],
            "edges": [176, 40_000, 160, 500, 30_000],
            "feasible": [True, True, True, False, True],
            "given_up": [False, True, False, False, True],
            "chosen": [False, False, True, False, False],
        }
    )
    ax = plot_search_trials(trials)
    by_label = {c.get_label(): c.get_offsets() for c in ax.collections}
    np.testing.assert_allclose(by_label["given up (collapsed masks)"], [[0, 40_000], [3, 30_000]])
    np.testing.assert_allclose(by_label["missed the target"], [[1, 500]])
    np.testing.assert_allclose(by_label["chosen"], [[4, 160]])
    best = ax.get_lines()[0]  # nothing before the first cleaned-up feasible trial; a given-up one keeps the level
    np.testing.assert_allclose(best.get_xdata(), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(best.get_ydata(), [np.nan, np.nan, 176, 176, 160])
