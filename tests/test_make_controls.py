"""The command that makes data/controls/: both tables written from a saved circuit, kept on rerun."""

import pandas as pd
import pytest

from circuitlab import SparseTransformer, controls, tasks
from circuitlab.circuit import Circuit
from circuitlab.config import SparseTransformerConfig
from circuitlab.make_circuits import main as make_circuits
from circuitlab.make_controls import TARGET_LOSSES, main

SMALL = ["steps=2", "pairs_per_step=2", "selection_pairs=4", "test_pairs=4", "skip_unsolved=false", "cleanup=false"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny checkpoint and a circuit pruned on it by the project's own command."""
    root = tmp_path_factory.mktemp("tiny")
    model = SparseTransformer(SparseTransformerConfig(n_layers=1, d_model=32, n_heads=2, d_vocab=1024, n_ctx=64))
    checkpoint = model.save_pretrained(root / "model")
    make_circuits(
        ["--model", str(checkpoint), "--out", str(root / "circuits"), "--tasks", "if_equals", "--set", *SMALL]
    )
    return checkpoint, root / "circuits" / "if_equals"


def test_both_tables_are_written_and_kept_on_rerun(pruned, tmp_path, capsys, monkeypatch):
    checkpoint, circuit = pruned
    pruned_tasks = []
    monkeypatch.setattr(
        controls,
        "prune",
        lambda model, task, *a, _prune=controls.prune, **k: (
            pruned_tasks.append(task.name) or _prune(model, task, *a, **k)
        ),
    )
    args = ["--model", str(checkpoint), "--circuit", str(circuit), "--out", str(tmp_path), "--threads", "1"]
    main(args)
    table = pd.read_csv(tmp_path / "controls.csv", index_col="control")
    assert list(table.index) == ["mean ablation (the method)", "zero ablation", "random model", "nonsense task"]
    assert table.loc["mean ablation (the method)", "nodes"] == Circuit.load(circuit).n_nodes
    assert pruned_tasks == ["if_equals", "if_equals", "if_equals__nonsense"]  # the method's run is not repeated
    curve = pd.read_csv(tmp_path / "edges_vs_loss.csv")
    assert sorted(set(curve.method)) == ["attribution", "learned"]
    assert sorted(set(curve.target_loss)) == sorted(TARGET_LOSSES)
    before = (tmp_path / "controls.csv").read_text()
    capsys.readouterr()
    main(args)
    assert (tmp_path / "controls.csv").read_text() == before and capsys.readouterr().out == ""


def test_a_method_circuit_of_another_task_is_refused(pruned):
    checkpoint, circuit = pruned
    model = SparseTransformer.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="a circuit of 'if_equals' for the task 'single_double_quote'"):
        controls.run_controls(model, tasks.get("single_double_quote"), method=Circuit.load(circuit))
