"""Synthetic snippets: deterministic, valid Python, rich in every task's pattern, never a test-split prompt."""

import random

from circuitlab import synthetic, tasks


def test_same_seed_same_output_and_different_seeds_differ():
    assert synthetic.generate_snippets(50, seed=7) == synthetic.generate_snippets(50, seed=7)
    assert synthetic.generate_snippets(50, seed=7) != synthetic.generate_snippets(50, seed=8)
    assert synthetic.generate_text(20_000, seed=3) == synthetic.generate_text(20_000, seed=3)


def test_generate_text_joins_snippets_until_long_enough():
    text = synthetic.generate_text(10_000, seed=1)
    assert len(text) >= 10_000
    snippets = text.split("\n\n")
    assert len(snippets) > 10 and text.endswith("\n")


def test_snippets_compile_as_python():
    for snippet in synthetic.generate_snippets(1000, seed=0):
        compile(snippet, "<snippet>", "exec")


def test_task_instances_come_from_the_train_split_with_their_answers(monkeypatch):
    drawn: list[tuple[tasks.Task, str, tasks.Instance, tasks.Instance]] = []
    original = tasks.Task.draw

    def spy(task, rng, split):
        pair = original(task, rng, split)
        drawn.append((task, split, *pair))
        return pair

    monkeypatch.setattr(tasks.Task, "draw", spy)
    rng = random.Random(0)
    answered: set[tuple[str, str]] = set()
    for _ in range(3000):
        start = len(drawn)
        snippet = synthetic.task_snippet(rng)
        task, split, first, second = drawn[start]
        assert split == "train" and {tasks.prompt_split(first.prompt), tasks.prompt_split(second.prompt)} == {"train"}
        for instance, answer in zip((first, second), task.candidates, strict=True):
            if snippet.startswith(instance.prompt + answer + instance.rest):
                answered.add((task.name, answer))
        assert {split for _, split, *_ in drawn[start:]} == {"train"}
    assert answered == {(name, answer) for name in synthetic.TRAINING_MIX for answer in tasks.get(name).candidates}


def test_tasks_registered_later_do_not_change_the_corpus(monkeypatch):
    before = synthetic.generate_text(20_000, seed=4)
    extra = tasks.Task("extra", "", ("]\n", ")\n"), tasks.get("close_tuple_or_list").sampler)
    monkeypatch.setitem(tasks.core._REGISTRY, "extra", extra)
    assert synthetic.generate_text(20_000, seed=4) == before
