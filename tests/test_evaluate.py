"""The evaluation command: any number of pairs, and clear errors for bad options and folders."""

import pytest

from circuitlab import tasks
from circuitlab.evaluate import main, task_scores
from circuitlab.model import SparseTransformer
from circuitlab.paths import CHECKPOINTS_DIR
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


@pytest.mark.parametrize(
    ("pairs", "message"), [("0", "--pairs=0 must be at least 1"), ("2.5", "--pairs=2.5 is not a whole number")]
)
def test_bad_pairs_are_refused_before_any_model_loads(pairs, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nowhere", "--pairs", pairs])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match=rf"circuitlab.evaluate: error: {tmp_path}/config.json is missing"):
        main([str(tmp_path), "--pairs", "5e1"])
