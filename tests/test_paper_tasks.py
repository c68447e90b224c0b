"""The paper's twenty tasks: its names and order, pairs that differ in the one fact each task asks about,
single-token candidates, and prompts whose last token is real text, not padding."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from circuitlab import tasks
from circuitlab.tasks.definitions import OPEN_FOR

TABLE_1 = (
    "single_double_quote", "final_kwarg", "set_or_string", "set_or_string_fixedvarname", "class_init", "with_as",
    "bracket_brace", "with_open", "bracket_counting", "for_while", "else_elif", "fstring_brace", "if_ternary",
    "var_swap", "indent_for", "lambda_func", "if_equals", "enumerate_range", "var_if", "while_return_true",
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    from circuitlab.tokenizer import load_tokenizer

    return load_tokenizer()


def test_the_twenty_tasks_are_registered_under_the_papers_names_first():
    assert tasks.PAPER_TASKS == TABLE_1
    assert tasks.names()[:20] == list(TABLE_1)
    assert len(tasks.names()) == len(set(tasks.names())) > 20


def test_a_renamed_task_is_found_under_its_old_name():
    assert tasks.get("range_or_enumerate") is tasks.get("enumerate_range")
    assert "range_or_enumerate" not in tasks.names()


# ------------------------------------------------------------------------------------- one fact per pair


def differing_part(first: str, second: str) -> tuple[str, str]:
    """The parts of two prompts between their common beginning and end, in whole words and single characters."""
    a, b = (re.findall(r"\w+|\s|[^\w\s]", text) for text in (first, second))
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    return "".join(a[start : len(a) - end]), "".join(b[start : len(b) - end])


def test_differing_part_finds_the_words_that_differ():
    assert differing_part("    else", "    elif") == ("else", "elif")
    assert differing_part("def f(a, b='s', c", "def f(a, b, c") == ("='s'", "")
    assert differing_part("if x == True", "x = True") == ("if x =", "x ")  # the shared "= True" is not part


def differs_in(first: str, second: str) -> Callable[[str, str], bool]:
    """Whether two prompts differ only in a part matching ``first`` and ``second`` (regular expressions)."""

    def check(a: str, b: str) -> bool:
        part_a, part_b = differing_part(a, b)
        return bool(re.fullmatch(first, part_a) and re.fullmatch(second, part_b))

    return check


INITIALISATION = re.compile(r" *(\w+) = (set\(\)|[\"'].*[\"'])")


def changed_lines(first: str, second: str) -> list[tuple[str, str]]:
    lines = [text.split("\n") for text in (first, second)]
    return [(a, b) for a, b in zip(*lines, strict=True) if a != b] if len(lines[0]) == len(lines[1]) else []


def swapped_initialisers(first: str, second: str) -> bool:
    """The prompts differ in two lines only, which give the same two variables `set()` and a string, swapped,
    and the prompt ends with one of the two."""
    changed = [(INITIALISATION.fullmatch(a), INITIALISATION.fullmatch(b)) for a, b in changed_lines(first, second)]
    if len(changed) != 2 or not all(match for pair in changed for match in pair):
        return False
    (a1, b1), (a2, b2) = changed
    return (
        a1[1] == b1[1] != a2[1] == b2[1]
        and (a1[2], a2[2]) == (b2[2], b1[2])
        and "set()" in (a1[2], a2[2])
        and first.split()[-1] in (a1[1], a2[1])
    )


def dict_made_list(first: str, second: str) -> bool:
    """The first prompt's dict literal `{"k": v, "l` is the second's list `["k", v, "l`."""
    a, b = differing_part(first, second)
    return a.startswith("{") and "[" + a[1:].replace('":', '",') == b


OPEN_NAMES = {tuple(name.strip('"').split(".")[0] for name in pair) for pair in OPEN_FOR}

ONE_FACT: dict[str, Callable[[str, str], bool]] = {
    "single_double_quote": differs_in("'", '"'),
    "final_kwarg": differs_in(r"=\S+", ""),
    "set_or_string": swapped_initialisers,
    "set_or_string_fixedvarname": swapped_initialisers,
    "class_init": differs_in("name", "value"),
    "with_as": differs_in("with", r"\w+ ="),
    "bracket_brace": dict_made_list,
    "with_open": lambda a, b: differing_part(a, b) in OPEN_NAMES,
    "bracket_counting": differs_in(r"\[", ""),
    "for_while": differs_in("for", "while"),
    "else_elif": differs_in("else", "elif"),
    "fstring_brace": differs_in("f", ""),
    "if_ternary": differs_in("", r"\w+ = -?\w+ "),
    "var_swap": differs_in("x, y = y", "y, x = x"),
    "indent_for": differs_in("    ", ""),
    "lambda_func": differs_in(r"\w+ = lambda", "def"),
    "if_equals": differs_in("if ", ""),
    "enumerate_range": differs_in(r", \w+", ""),
    "var_if": differs_in(r"if \w+ =", r"\w+ "),  # `if x == True` against `x = True`
    "while_return_true": differs_in("while", "return"),
}


def test_every_paper_task_has_its_fact():
    assert tuple(ONE_FACT) == TABLE_1


@pytest.mark.parametrize("name", TABLE_1)
def test_pairs_differ_in_one_fact(name):
    for first, second in tasks.get(name).pairs("test", 200):
        assert ONE_FACT[name](first.prompt, second.prompt), (first.prompt, second.prompt)


def test_set_or_string_uses_the_last_initialised_variable_only_half_the_time():
    pairs = tasks.get("set_or_string").pairs("test", 200)
    last = [changed_lines(a.prompt, b.prompt)[-1][0].split()[0] == a.prompt.split()[-1] for a, b in pairs]
    assert 0.3 < sum(last) / len(last) < 0.7
    assert {a.prompt.split()[-1] for a, _ in tasks.get("set_or_string_fixedvarname").pairs("test", 50)} == {"x"}


# ----------------------------------------------------------------------------------- tokens and padding


@pytest.mark.parametrize("name", TABLE_1)
def test_candidates_are_single_tokens_and_the_last_position_is_the_prompts_end(tokenizer, name):
    task = tasks.get(name)
    assert all(len(tokenizer.encode(c, add_special_tokens=False).ids) == 1 for c in task.candidates)
    batch = task.batch(tokenizer, "test", 50)
    pad = tokenizer.token_to_id("<|endoftext|>")
    for row, point in enumerate(batch.datapoints):
        ids = tokenizer.encode(point.prompt, add_special_tokens=False).ids
        assert batch.tokens[row, batch.last[row]] == ids[-1] != pad
        assert (batch.tokens[row, batch.last[row] + 1 :] == pad).all()
