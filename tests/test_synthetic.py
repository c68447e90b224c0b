"""Synthetic snippets: deterministic, valid Python, rich in every task's pattern, never a test-split prompt; one
token stream per mix."""

import hashlib
import json
import random

import pytest

from circuitlab import build, synthetic, tasks
from circuitlab.paths import REPO_ROOT
from circuitlab.synthetic import MIXES, PYTHON, PYTHON_FOCUS, TEMPLATES
from circuitlab.tokenizer import DEFAULT_TOKENIZER_PATH
from circuitlab.train import load_config


def test_same_seed_same_output_and_different_seeds_differ():
    assert synthetic.generate_snippets(50, seed=7) == synthetic.generate_snippets(50, seed=7)
    assert synthetic.generate_snippets(50, seed=7) != synthetic.generate_snippets(50, seed=8)
    assert synthetic.generate_text(20_000, seed=3) == synthetic.generate_text(20_000, seed=3)


def test_generate_text_joins_snippets_until_long_enough():
    text = synthetic.generate_text(10_000, seed=1)
    assert len(text) >= 10_000
    snippets = text.split("\n\n")
    assert len(snippets) > 10 and text.endswith("\n")


@pytest.mark.parametrize("mix", MIXES.values(), ids=list(MIXES))
def test_snippets_compile_as_python(mix):
    for snippet in synthetic.generate_snippets(1000, seed=0, mix=mix):
        compile(snippet, "<snippet>", "exec")


@pytest.mark.parametrize("mix", MIXES.values(), ids=list(MIXES))
def test_task_instances_come_from_the_train_split_with_their_answers(monkeypatch, mix):
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
        snippet = synthetic.task_snippet(rng, mix)
        task, split, first, second = drawn[start]
        assert split == "train" and {tasks.prompt_split(first.prompt), tasks.prompt_split(second.prompt)} == {"train"}
        for instance, answer in zip((first, second), task.candidates, strict=True):
            if snippet.startswith(instance.prompt + answer + instance.rest):
                answered.add((task.name, answer))
        assert {split for _, split, *_ in drawn[start:]} == {"train"}
    assert answered == {(name, answer) for name in mix.task_weights for answer in tasks.get(name).candidates}


def test_tasks_registered_later_do_not_change_the_corpus(monkeypatch):
    before = synthetic.generate_text(20_000, seed=4)
    extra = tasks.Task("extra", "", ("]\n", ")\n"), tasks.get("close_tuple_or_list").sampler)
    monkeypatch.setitem(tasks.core._REGISTRY, "extra", extra)
    assert synthetic.generate_text(20_000, seed=4) == before


def test_the_python_mix_holds_the_paper_tasks_inside_code_and_far_fewer_literal_rows():
    assert set(tasks.PAPER_TASKS) | set(TEMPLATES.task_weights) == set(PYTHON.task_weights)
    rng = random.Random(1)
    for _ in range(300):
        pieces = synthetic.snippet_pieces(rng, PYTHON)
        assert not pieces[0][1]  # an instance never opens a snippet: generated code comes first
        assert sum(literal for _, literal in pieces) <= 1
    templates, python = synthetic.literal_share(TEMPLATES, 500), synthetic.literal_share(PYTHON, 500)
    assert 0.45 < templates < 0.65 and 0.05 < python < 0.25  # characters inside task instances
    assert synthetic.get_mix("python") is PYTHON
    with pytest.raises(ValueError, match=r"unknown synthetic mix 'html'; choose one of \['python', 'python_case_"):
        synthetic.get_mix("html")


@pytest.mark.parametrize("name", ["sparse_python", "dense_python", "sparse_python_focus", "dense_python_focus"])
def test_the_python_configs_keep_literal_task_rows_at_most_30_percent(name):
    _, train_cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    assert train_cfg.synthetic_fraction * synthetic.get_mix(train_cfg.synthetic_mix).task_fraction <= 0.30


def test_the_focus_mix_shows_the_case_studies_far_more_often_in_code():
    rng = random.Random(2)
    counts = [sum(literal for _, literal in synthetic.snippet_pieces(rng, PYTHON_FOCUS)) for _ in range(400)]
    assert set(counts) == {0, 2, 3, 4}  # task-free snippets, or 2-4 instances of one task

    def share(mix, name):
        return mix.task_weights[name] / sum(mix.task_weights.values())

    assert all(share(PYTHON_FOCUS, name) > 3 * share(PYTHON, name) for name in synthetic.CASE_STUDY_TASKS)
    assert synthetic.literal_share(PYTHON_FOCUS, 500) > 2 * synthetic.literal_share(PYTHON, 500)


def test_token_streams_are_rebuilt_when_a_stream_is_missing_or_the_tokenizer_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "TOKENS_DIR", tmp_path)
    digest = hashlib.sha256(DEFAULT_TOKENIZER_PATH.read_bytes()).hexdigest()
    assert not build.token_streams_are_current(DEFAULT_TOKENIZER_PATH)  # nothing built yet
    old = {"real/train": 1, "real/val": 1, "synthetic/train": 1, "synthetic/val": 1}  # before the mixes had streams
    for tokens, sha, current in ((old, digest, False), (dict.fromkeys(build.STREAM_NAMES, 1), "0" * 64, False)):
        (tmp_path / "meta.json").write_text(json.dumps({"tokenizer_sha256": sha, "tokens": tokens}))
        assert build.token_streams_are_current(DEFAULT_TOKENIZER_PATH) is current
    (tmp_path / "meta.json").write_text(
        json.dumps({"tokenizer_sha256": digest, "tokens": dict.fromkeys(build.STREAM_NAMES, 1)})
    )
    assert build.token_streams_are_current(DEFAULT_TOKENIZER_PATH)
    assert {"python/train", "templates/val"} <= set(build.STREAM_NAMES)
