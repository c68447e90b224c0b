"""The candidates table: every column of a trained checkpoint, one row per model, resumed without recomputing."""

from __future__ import annotations

import math

import pytest

from circuitlab import candidates, tables, tasks
from circuitlab.candidates import CASE_STUDIES, COLUMNS, TABLE_FILE, candidate_row, run
from circuitlab.paths import REPO_ROOT
from circuitlab.train import load_config, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("candidates") / "tiny_python"
    overrides = ["train.steps=10", "train.synthetic_mix=python", f"train.out_dir={out}"]
    train(*load_config(REPO_ROOT / "configs" / "tiny.yaml", overrides), progress=False)
    return out


def test_a_row_has_every_column_and_an_unsolved_case_study_is_not_pruned(tiny_run):
    natural = {name: tasks.harvest(name, limit=30) for name in ("single_double_quote", "if_equals")}
    row = candidate_row(tiny_run, natural)
    assert tuple(row) == COLUMNS
    assert row["synthetic_mix"] == "python" and row["tokens"] == 10 * 8 * 32 and row["shape"] == "2x32"
    assert row["device"] == "cpu"
    assert row["val_loss_python"] > 3 and row["val_loss_real"] > 3  # ten steps of a toy model: far from trained
    assert 0 <= row["paper_tasks_solved"] <= 2  # an untrained model solves at most the trivial ones
    assert 0 <= row["natural_accuracy"] <= 1 and not math.isnan(row["natural_single_double_quote"])
    assert row["natural_beats_guess"] in (0, 1, 2)
    assert abs(row["copying_gain"]) < 0.5  # ten steps learn no copying
    for name in CASE_STUDIES:  # no task reaches the target, so none is pruned
        assert (row[f"{name}_nodes"], row[f"{name}_edges"], row[f"{name}_loss"]) == ("", "", "")


def test_the_command_resumes_and_refuses_a_folder_that_is_no_run(tiny_run, tmp_path, monkeypatch):
    rows = []

    def measured(path, natural):
        rows.append(path)
        return dict.fromkeys(COLUMNS, 1) | {"model": path.name}

    monkeypatch.setattr(candidates, "candidate_row", measured)
    monkeypatch.setattr(tasks, "HARVESTED", ())
    assert run([tiny_run], tmp_path) == ["tiny_python"]
    assert run([tiny_run], tmp_path) == [] and len(rows) == 1  # resumed: the row is there, nothing recomputed
    assert [row["model"] for row in tables.read_rows(tmp_path / TABLE_FILE)] == ["tiny_python"]
    with pytest.raises(FileNotFoundError, match=r"no train_config.json\): .*nowhere"):
        run([tmp_path / "nowhere"], tmp_path)
