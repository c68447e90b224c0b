"""The evaluation command: any number of pairs, natural instances against templated pairs, and clear errors for bad
options and folders; the weight report; the copying measure."""

import math
from types import SimpleNamespace

import pytest
import torch

from circuitlab import evaluate, tasks
from circuitlab.evaluate import (
    copying_gain,
    main,
    natural_against_templated,
    natural_scores,
    nonzero_weights,
    task_scores,
    weight_report,
)
from circuitlab.model import SparseTransformer
from circuitlab.paths import CHECKPOINTS_DIR
from circuitlab.sparsity import project_topk_
from circuitlab.tasks import task_accuracy


@pytest.fixture(scope="module")
def sparse() -> SparseTransformer:
    return SparseTransformer.from_pretrained(CHECKPOINTS_DIR / "sparse")


def test_a_number_of_pairs_below_the_batch_size_is_scored(sparse):
    scores = task_scores(sparse, "bracket_counting", n_pairs=50)  # was a division by zero
    batch = tasks.get("bracket_counting").batch(sparse.tokenizer, "test", 50, seed=0, n_ctx=sparse.cfg.n_ctx)
    assert scores["accuracy"] == pytest.approx(task_accuracy(sparse(batch.tokens), batch))
    uneven = task_scores(sparse, "bracket_counting", n_pairs=7, batch_pairs=3)  # batches of 3, 3 and 1
    assert 0 <= uneven["accuracy"] <= 1 and uneven["loss"] > 0
    with pytest.raises(ValueError, match="n_pairs=0 must be at least 1"):
        task_scores(sparse, "bracket_counting", n_pairs=0)


def test_natural_scores_count_the_instances_and_the_commoner_answer(sparse):
    points = tasks.harvest("while_return_true", "val", limit=8)
    scores = natural_scores(sparse, "while_return_true", limit=8)
    commoner = max(sum(p.target == answer for p in points) for answer in tasks.get("while_return_true").candidates)
    assert scores["n"] == len(points) == 8 and scores["commoner"] == commoner / 8
    assert 0 <= scores["accuracy"] <= 1 and scores["loss"] > 0


def test_a_split_without_instances_scores_nan(sparse, monkeypatch):
    monkeypatch.setattr(tasks, "harvest", lambda name, split, limit: [])
    scores = natural_scores(sparse, "with_open")
    assert scores["n"] == 0 and math.isnan(scores["accuracy"]) and math.isnan(scores["commoner"])


def test_the_natural_table_has_a_row_per_harvested_task(sparse, monkeypatch):
    monkeypatch.setattr(tasks, "HARVESTED", ("while_return_true", "lambda_func"))
    table = natural_against_templated({"sparse": sparse}, n_pairs=5, limit=4)
    assert list(table.index) == ["while_return_true", "lambda_func"]
    assert list(table.columns) == ["n natural", "commoner answer", "sparse: natural", "sparse: templated"]
    assert (table["n natural"] == 4).all()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--pairs", "0"], "--pairs=0 must be at least 1"),
        (["--pairs", "2.5"], "--pairs=2.5 is not a whole number"),
        (["--natural", "0"], "--natural=0 must be at least 1"),
    ],
)
def test_bad_options_are_refused_before_any_model_loads(option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nowhere", *option])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match=rf"circuitlab.evaluate: error: {tmp_path}/config.json is missing"):
        main([str(tmp_path), "--pairs", "5e1"])


def test_the_written_report_names_the_command_that_made_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(evaluate, "report", lambda checkpoints, n_pairs: f"{len(checkpoints)} models, {n_pairs} pairs")
    out = tmp_path / "tasks.md"
    main(["runs/a", "runs/b", "--pairs", "200", "--out", str(out), "--title", "Candidates on the tasks"])
    command = f"python -m circuitlab.evaluate runs/a runs/b --pairs 200 --out {out} --title 'Candidates on the tasks'"
    assert out.read_text().splitlines()[:3] == [
        "# Candidates on the tasks",
        "",
        f"Evaluated by `{command}`; the README says how each was trained.",
    ]
    assert "2 models, 200 pairs" in out.read_text() and "2 models, 200 pairs" in capsys.readouterr().out
    main(["runs/a", "--out", str(out)])  # the defaults stay out of the command
    assert out.read_text().splitlines()[:3] == [
        "# The shipped models",
        "",
        f"Evaluated by `python -m circuitlab.evaluate runs/a --out {out}`; the README says how each was trained.",
    ]


def test_weight_report_counts_what_the_projection_kept(tiny_model):
    nonzero = project_topk_(tiny_model.weight_matrices(), l0_hidden=0.125, l0_embed=0.5, min_per_unit=4)
    report = weight_report(tiny_model).set_index("matrix")
    cfg = tiny_model.cfg
    assert list(report.index) == list(tiny_model.weight_matrices())  # every matrix, nothing else
    assert report["nonzero"].sum() == nonzero == nonzero_weights(tiny_model)
    assert report.loc["blocks.1.mlp.W_in", "shape"] == (cfg.d_model, cfg.d_mlp)
    assert report.loc["blocks.1.mlp.W_in", "size"] == cfg.d_model * cfg.d_mlp
    assert report.loc["blocks.1.mlp.W_in", "kind"] == "W_in" and report.loc["embed.W_E", "kind"] == "W_E"
    assert report.loc["embed.W_E", "kept"] == pytest.approx(0.5, abs=1e-3)
    hidden = report.drop(index=["embed.W_E", "unembed.W_U"])
    assert (hidden["kept"] >= 0.125).all() and (hidden["kept"] < 0.2).all()  # 1/8, plus each unit's four
    with torch.no_grad():
        tiny_model.blocks[0].attn.W_Q.zero_()
    assert weight_report(tiny_model).set_index("matrix").loc["blocks.0.attn.W_Q", "kept"] == 0


class _Copier:
    """An ideal induction head: predicts the token that followed the latest earlier occurrence of the current one
    (uniform when the token has not occurred), with logit gap `sharpness`."""

    def __init__(self, sharpness: float, n_ctx: int = 128, d_vocab: int = 1024):
        self.cfg = SimpleNamespace(n_ctx=n_ctx, d_vocab=d_vocab)
        self.sharpness = sharpness

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, self.cfg.d_vocab)
        for row, sequence in enumerate(tokens.tolist()):
            for position, token in enumerate(sequence):
                earlier = [i for i in range(position) if sequence[i] == token]
                if earlier:
                    logits[row, position, sequence[earlier[-1] + 1]] = self.sharpness
        return logits


def test_copying_gain_is_large_for_a_copier_and_zero_without_one():
    # Uniform everywhere except where copying applies: the repeated window is predicted, the unrepeated is not.
    assert copying_gain(_Copier(sharpness=20.0), length=20, n_windows=8) > 3.0  # of ln(1024) = 6.9
    assert copying_gain(_Copier(sharpness=0.0), length=20, n_windows=8) == pytest.approx(0.0, abs=1e-6)


def test_copying_gain_refuses_a_window_over_half_the_context():
    with pytest.raises(ValueError, match="length=65"):
        copying_gain(_Copier(sharpness=1.0), length=65)
