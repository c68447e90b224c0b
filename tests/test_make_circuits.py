"""The command that makes data/circuits/: circuits saved and skipped on rerun, the size-vs-target table,
and bad arguments refused before anything is pruned."""

import csv

import pytest

from circuitlab import SparseTransformer
from circuitlab.circuit import Circuit
from circuitlab.config import SparseTransformerConfig
from circuitlab.make_circuits import TABLE_COLUMNS, main

SMALL = ["steps=2", "pairs_per_step=2", "selection_pairs=4", "test_pairs=4", "skip_unsolved=false", "ablation=zero"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = SparseTransformer(SparseTransformerConfig(n_layers=1, d_model=32, n_heads=2, d_vocab=1024, n_ctx=64))
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


def test_circuits_are_saved_and_kept_on_rerun(checkpoint, tmp_path, capsys):
    out = tmp_path / "circuits"
    main(["--model", str(checkpoint), "--out", str(out), "--tasks", "if_equals", "--threads", "1", "--set", *SMALL])
    saved = Circuit.load(out / "if_equals")
    assert saved.task_name == "if_equals" and saved.config["steps"] == 2 and saved.search["seconds"] > 0
    # where the time went: the search alone evaluates k = 0 and at least one k above it (nothing holds at 0)
    assert saved.search["passes"] >= 2 and saved.search["seconds_search_and_cleanup"] <= saved.search["seconds"]
    main(["--model", str(checkpoint), "--out", str(out), "--tasks", "if_equals", "--set", *SMALL])
    assert "if_equals: exists, skipped" in capsys.readouterr().out


def test_size_table_has_a_row_per_target_and_resumes(checkpoint, tmp_path, capsys):
    table = tmp_path / "sizes.csv"
    args = ["--model", str(checkpoint), "--targets", "0.1", "0.3", "--table", str(table), "--tasks", "if_equals"]
    main([*args, "if_equals", "--set", *SMALL])  # a task named twice is measured once
    rows = list(csv.DictReader(table.open()))
    assert tuple(rows[0]) == TABLE_COLUMNS
    assert [(r["task"], float(r["target_loss"])) for r in rows] == [("if_equals", 0.1), ("if_equals", 0.3)]
    main([*args, "--set", *SMALL])
    assert len(list(csv.DictReader(table.open()))) == 2
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "if_equals", "nosuch"], "no task named 'nosuch'"),
        (["--set", "skip_unsolved=maybe"], "skip_unsolved"),
        (["--set", "steps=0"], "steps=0"),
        (["--set", "nosuch=1"], "nosuch"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_pruned(checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "circuits"
    with pytest.raises(SystemExit):
        main(["--model", str(checkpoint), "--out", str(out), *extra])
    assert message in capsys.readouterr().err
    assert not out.exists()
