"""Tasks: contrast pairs, disjoint splits, single-token candidates, batches, the task loss (harvesting:
test_harvest.py)."""

import math
import random

import pytest
import torch

from circuitlab import tasks
from circuitlab.tasks import Datapoint, Instance, Task, make_batch, task_accuracy, task_loss

CASE_STUDIES = ("single_double_quote", "bracket_counting", "set_or_string", "set_or_string_fixedvarname")


@pytest.fixture(scope="module")
def tokenizer():
    from circuitlab.tokenizer import DEFAULT_TOKENIZER_PATH, load_tokenizer

    if not DEFAULT_TOKENIZER_PATH.exists():
        pytest.skip(f"{DEFAULT_TOKENIZER_PATH} does not exist yet; build it with python -m circuitlab.build tokenizer")
    return load_tokenizer()


# ------------------------------------------------------------------------------------------------ registry


def test_registry_has_the_case_studies_and_at_least_twenty_tasks():
    assert len(tasks.names()) >= 20
    assert set(CASE_STUDIES) <= set(tasks.names())
    assert all(tasks.get(name).name == name for name in tasks.names())


def test_unknown_task_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="no task named 'nope'.*bracket_counting"):
        tasks.get("nope")


def test_registering_a_taken_name_needs_overwrite():
    task = tasks.get("bracket_counting")
    with pytest.raises(ValueError, match="already registered"):
        tasks.register(Task(task.name, "copy", task.candidates, task.sampler))
    assert tasks.register(task, overwrite=True) is task


def test_task_rejects_equal_candidates():
    with pytest.raises(ValueError, match="same string"):
        Task("same", "", ("]\n", "]\n"), tasks.get("bracket_counting").sampler)


# ----------------------------------------------------------------------------------------- pairs and splits


@pytest.mark.parametrize("name", tasks.names())
def test_pairs_are_matched_contrasts(name):
    task = tasks.get(name)
    for first, second in task.pairs("test", 50):
        assert (first.target, first.alternative) == task.candidates
        assert (second.target, second.alternative) == task.candidates[::-1]
        assert first.prompt != second.prompt


@pytest.mark.parametrize("name", tasks.names())
def test_at_least_1000_distinct_test_pairs_disjoint_from_train(name):
    task = tasks.get(name)
    test = task.pairs("test", 1000)
    train = task.pairs("train", 1000, seed=1)
    test_prompts = {point.prompt for pair in test for point in pair}
    train_prompts = {point.prompt for pair in train for point in pair}
    assert len(test_prompts) == 2000
    assert not test_prompts & train_prompts
    assert {tasks.prompt_split(p) for p in test_prompts} == {"test"}
    assert {tasks.prompt_split(p) for p in train_prompts} == {"train"}


def test_pairs_are_deterministic_in_the_seed():
    task = tasks.get("set_or_string")
    assert task.pairs("train", 20, seed=3) == task.pairs("train", 20, seed=3)
    assert task.pairs("train", 20, seed=3) != task.pairs("train", 20, seed=4)
    assert task.datapoints("test", 5) == [point for pair in task.pairs("test", 5) for point in pair]


def test_about_a_fifth_of_pairs_are_test():
    rng = random.Random(0)
    sampler = tasks.get("single_double_quote").sampler
    splits = [tasks.pair_split(sampler(rng)) for _ in range(3000)]
    share = splits.count("test") / (splits.count("test") + splits.count("train"))
    assert 0.15 < share < 0.25


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split must be one of"):
        tasks.get("bracket_counting").pairs("val", 3)


def test_a_sampler_without_variety_gives_a_clear_error():
    agreeing = next(i for i in range(100) if tasks.pair_split((Instance(f"x = [{i}"), Instance(f"x = ({i}"))))
    fixed = Task("fixed", "", ("]\n", ")\n"), lambda rng: (Instance(f"x = [{agreeing}"), Instance(f"x = ({agreeing}")))
    split = tasks.pair_split(fixed.sampler(random.Random()))
    with pytest.raises(ValueError, match="gave only 1 distinct"):
        fixed.pairs(split, 2)
    other = "train" if split == "test" else "test"
    with pytest.raises(RuntimeError, match=f"no {other} pair in"):
        fixed.pairs(other, 1)


# -------------------------------------------------------------------------------------- tokenizer and batch


@pytest.mark.parametrize("name", tasks.names())
def test_candidates_are_single_tokens_and_prompts_end_on_a_token_boundary(tokenizer, name):
    task = tasks.get(name)
    target_ids = task.candidate_ids(tokenizer)
    points = task.datapoints("test", 100) + task.datapoints("train", 100)
    for point in points:
        prompt_ids = tokenizer.encode(point.prompt, add_special_tokens=False).ids
        full_ids = tokenizer.encode(point.prompt + point.target, add_special_tokens=False).ids
        assert full_ids == prompt_ids + [target_ids[task.candidates.index(point.target)]], point


def test_a_candidate_that_is_not_one_token_is_a_clear_error(tokenizer):
    bad = Task("bad", "", ("]\n", " zqxwvkjzqxwvkj"), tasks.get("bracket_counting").sampler)
    with pytest.raises(ValueError, match=r"' zqxwvkjzqxwvkj' is not a single token.*tokenises as \[.*Rebuild"):
        bad.batch(tokenizer, "test", 2)


def test_batch_shapes_padding_and_last_index(tokenizer):
    task = tasks.get("set_or_string")
    batch = task.batch(tokenizer, "test", 4)
    pad = tokenizer.token_to_id("<|endoftext|>")
    assert len(batch) == 8 and batch.tokens.dtype == torch.long
    assert batch.tokens.shape[1] == int(batch.last.max()) + 1
    for row, point in enumerate(batch.datapoints):
        ids = tokenizer.encode(point.prompt, add_special_tokens=False).ids
        assert batch.last[row] == len(ids)  # BOS first, then the prompt
        assert batch.tokens[row, 0] == pad
        assert batch.tokens[row, 1 : len(ids) + 1].tolist() == ids
        assert (batch.tokens[row, len(ids) + 1 :] == pad).all()
    a, b = task.candidate_ids(tokenizer)
    assert batch.target.tolist() == [a, b] * 4 and batch.alternative.tolist() == [b, a] * 4


def test_batch_truncates_to_the_last_n_ctx_tokens(tokenizer):
    task = tasks.get("set_or_string")
    full = task.batch(tokenizer, "test", 3, prepend_bos=False)
    short = task.batch(tokenizer, "test", 3, n_ctx=6, prepend_bos=False)
    assert short.tokens.shape == (6, 6) and (short.last == 5).all()
    for row in range(6):
        end = int(full.last[row]) + 1
        assert short.tokens[row].tolist() == full.tokens[row, end - 6 : end].tolist()
    with pytest.raises(ValueError, match="more than n_ctx=6; pass truncate=True"):
        task.batch(tokenizer, "test", 3, n_ctx=6, truncate=False)


def test_a_prompt_that_does_not_end_on_a_token_boundary_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="does not end on a token boundary"):
        make_batch(tokenizer, [Datapoint("x = 'abc ", "'\n", '"\n')])


# ---------------------------------------------------------------------------------------- loss and accuracy


def _batch_reading(logit_pairs: list[tuple[float, float]]) -> tuple[torch.Tensor, tasks.TaskBatch]:
    """Logits [n, 3, 5] whose last positions hold the given (target, alternative) logits."""
    n = len(logit_pairs)
    logits = torch.randn(n, 3, 5)
    last = torch.tensor([2, 1, 0, 2][:n])
    target, alternative = torch.tensor([1, 3, 0, 4][:n]), torch.tensor([2, 0, 4, 1][:n])
    for i, (t, a) in enumerate(logit_pairs):
        logits[i, last[i], target[i]] = t
        logits[i, last[i], alternative[i]] = a
    batch = tasks.TaskBatch(torch.zeros(n, 3, dtype=torch.long), last, target, alternative)
    return logits, batch


def test_task_loss_on_hand_computed_logits():
    logits, batch = _batch_reading([(1.0, 1.0), (2.0, 0.0), (0.0, 3.0)])
    expected = [math.log(2), math.log(1 + math.exp(-2)), math.log(1 + math.exp(3))]
    assert task_loss(logits, batch, "none").tolist() == pytest.approx(expected, abs=1e-6)
    assert task_loss(logits, batch).item() == pytest.approx(sum(expected) / 3, abs=1e-6)
    assert task_loss(logits, batch, "sum").item() == pytest.approx(sum(expected), abs=1e-6)


def test_task_accuracy_compares_the_two_candidate_logits():
    logits, batch = _batch_reading([(1.0, 0.5), (2.0, 0.0), (0.0, 3.0), (-1.0, -2.0)])
    assert task_accuracy(logits, batch) == pytest.approx(0.75)


def test_task_loss_rejects_mismatched_logits():
    logits, batch = _batch_reading([(1.0, 1.0), (2.0, 0.0)])
    with pytest.raises(ValueError, match=r"logits must be \[n=2, pos, vocab\]"):
        task_loss(logits[:1], batch)
    with pytest.raises(ValueError, match="positions but the batch's last index is 2"):
        task_loss(logits[:, :2], batch)
    with pytest.raises(ValueError, match="reduction must be"):
        task_loss(logits, batch, "max")


def test_random_label_control_keeps_prompts_and_scrambles_answers():
    task = tasks.get("bracket_counting")
    control = tasks.with_random_labels(task, seed=0)
    assert control.candidates == task.candidates and control.name == "bracket_counting_random_labels"
    pairs = control.pairs("test", 200, seed=0)
    depth_two = [first.prompt.count("[") - first.prompt.count("]") == 2 for first, _ in pairs]
    assert 0.3 < sum(depth_two) / len(depth_two) < 0.7  # the answer no longer follows the nesting depth
    assert control.pairs("test", 20, seed=0) == pairs[:20]
