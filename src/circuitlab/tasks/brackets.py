"""Brackets: how deep a literal is nested and which bracket opened it; what closes a header or a key."""

from __future__ import annotations

import random
from collections.abc import Callable

from circuitlab.tasks.codegen import (
    CALLABLES,
    FUNCTIONS,
    INDENT,
    WORDS,
    atom,
    following,
    frame,
    if_before_elif,
    lead,
    literal,
    pick_name,
    statement,
)
from circuitlab.tasks.core import FramedPair, Instance, define_framed_task, define_task, same_rest


def nested(rng: random.Random, depth: int, opener: Callable[[int], str]) -> tuple[str, str]:
    """An unfinished nested literal, open to ``depth`` >= 2, and the same one with its innermost opener removed.

    ``opener(level)`` gives the opening text at each level (``"["``, ``"f("``, ...). Completed siblings come
    before each deeper opener, so the depth is not simply the number of brackets at the start.
    """
    parts = []
    for level in range(1, depth + 1):
        parts.append(opener(level))
        if level < depth:
            for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
                inner = ", ".join(atom(rng) for _ in range(rng.randint(1, 4)))
                parts.append(f"{opener(level + 1)}{inner}{')' if opener(level + 1).endswith('(') else ']'}, ")
    elements = _elements(rng, rng.randint(1, 6))
    return "".join(parts) + elements, "".join(parts[:-1]) + elements


def _elements(rng: random.Random, n: int) -> str:
    """``n`` comma-separated atoms. A lone element is a number: a name right after a bracket would merge with it
    into one pre-token (``[name``), so the last token alone would give the bracket away."""
    return ", ".join(atom(rng, names_ok=n > 1) for _ in range(n))


def _depth_pair(rng: random.Random, indent: str, start: str, opener: Callable[[int], str]) -> FramedPair:
    """``start`` then a literal nested two deep (see :func:`nested`), or one deep; the same lines follow both."""
    deep, shallow = nested(rng, 2, opener)
    rest = following(rng, indent)
    return (start + deep, rest), (start + shallow, rest)


@define_framed_task(
    "bracket_counting",
    ("]]\n", "]\n"),
    "Close a list literal that ends a line: nested at depth 2 needs `]]`, depth 1 needs `]` (the paper's task).",
)
def _bracket_counting(rng: random.Random, indent: str) -> FramedPair:
    return _depth_pair(rng, indent, lead(rng, indent), lambda level: "[")


@define_framed_task(
    "paren_counting",
    ("))\n", ")\n"),
    "Close nested calls at the end of a line: a call inside a call needs `))`, a single call `)`.",
)
def _paren_counting(rng: random.Random, indent: str) -> FramedPair:
    start = lead(rng, indent, "")
    outer, inner = rng.choice(FUNCTIONS + CALLABLES), rng.choice(FUNCTIONS + CALLABLES)
    return _depth_pair(rng, indent, start, lambda level: f"{outer}(" if level == 1 else f"{inner}(")


def _opener_pair(rng: random.Random, openers: tuple[str, str]) -> tuple[Instance, Instance]:
    """The same elements opened by two different brackets (completed inner groups make it less trivial)."""
    head, indent = frame(rng)
    start = lead(rng, indent)
    items = []
    for _ in range(rng.randint(0, 5)):
        inner = ", ".join(atom(rng) for _ in range(rng.randint(1, 3)))
        items.append(rng.choice((atom(rng), literal(rng), f"[{inner}]", f"({inner})")))
    items.append(atom(rng, names_ok=bool(items)))
    body = ", ".join(items)
    rest = following(rng, indent)
    return same_rest(rest, *(f"{head}{indent}{start}{opener}{body}" for opener in openers))


@define_task(
    "close_tuple_or_list",
    (")\n", "]\n"),
    "Close a literal at the end of a line with the bracket that opened it: a tuple or call `)`, a list `]`.",
)
def _close_tuple_or_list(rng: random.Random) -> tuple[Instance, Instance]:
    return _opener_pair(rng, (rng.choice(("(", "(", f"{rng.choice(FUNCTIONS)}(")), "["))


@define_task(
    "close_set_or_list",
    ("}\n", "]\n"),
    "Close a literal at the end of a line with the bracket that opened it: a set `}`, a list `]`.",
)
def _close_set_or_list(rng: random.Random) -> tuple[Instance, Instance]:
    return _opener_pair(rng, ("{", "["))


def _header_or_statement(rng: random.Random, indent: str, header: str, statement_line: str) -> FramedPair:
    """A block header, continued by a line of its body, and a statement, continued by the lines after it."""
    return (header, statement(rng, indent + INDENT)), (statement_line, following(rng, indent))


@define_framed_task(
    "paren_colon",
    ("):\n", ")\n"),
    "Close a call that ends a line: in an `if`/`while`/`for` header it needs `):`, in a statement `)`.",
)
def _paren_colon(rng: random.Random, indent: str) -> FramedPair:
    var = pick_name(rng)
    func = rng.choice(FUNCTIONS + CALLABLES)
    header = rng.choice(("if ", "if not ", "while ", f"for {var} in ", "elif "))
    opening = if_before_elif(rng, indent) if header == "elif " else ""
    statement_lead = lead(rng, indent, "", f"{var} = not ")
    args = ", ".join(literal(rng, {var}) for _ in range(rng.randint(0, 3)))
    args = f"{args}, {atom(rng, {var})}" if args else atom(rng, {var})
    call = f"{func}({args}"
    return _header_or_statement(rng, indent, f"{opening}{header}{call}", f"{opening}{statement_lead}{call}")


@define_framed_task(
    "condition_colon",
    (":\n", "\n"),
    "A condition that ends a line: after `if`/`while`/`elif` it needs `:`, as a right-hand side a plain newline.",
)
def _condition_colon(rng: random.Random, indent: str) -> FramedPair:
    var, other = pick_name(rng), pick_name(rng)
    condition = rng.choice(
        (other, f"not {other}", f"{var} > {other}", f"{var} in {other}", f"{var} is not {other}", f"{var} == {other}")
    )
    header = rng.choice(("if ", "if ", "while ", "elif "))
    opening = if_before_elif(rng, indent) if header == "elif " else ""
    flag = rng.choice(("ok", "done", "ready", "result", "valid", "is_new", "matched", "flag"))
    return _header_or_statement(rng, indent, f"{opening}{header}{condition}", f"{opening}{flag} = {condition}")


@define_framed_task(
    "dict_or_set_key",
    ('":', '",'),
    'After a string key in a `{...}` literal: a dict (earlier entries have colons) needs `":`, a set `",`.',
)
def _dict_or_set_key(rng: random.Random, indent: str) -> FramedPair:
    start = lead(rng, indent)
    keys = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
    entries_dict = ", ".join(f'"{k}": {literal(rng)}' for k in keys[:-1])
    entries_set = ", ".join(f'"{k}"' for k in keys[:-1])
    return (
        (f'{start}{{{entries_dict}, "{keys[-1]}', f" {literal(rng)}}}\n"),
        (f'{start}{{{entries_set}, "{keys[-1]}', f' "{rng.choice(WORDS)}"}}\n'),
    )


@define_framed_task(
    "bracket_brace",
    ('":', '",'),
    "After a string in a literal: inside a dict `{` a key is followed by `:`, inside a list `[` an element by `,` "
    "(our tokenizer merges both with the string's closing quote).",
)
def _bracket_brace(rng: random.Random, indent: str) -> FramedPair:
    start = lead(rng, indent)
    keys = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
    values = [literal(rng) for _ in keys[1:]]
    entries = {
        separator: "".join(f'"{k}"{separator} {v}, ' for k, v in zip(keys[:-1], values, strict=True))
        for separator in ":,"
    }
    return (
        (f'{start}{{{entries[":"]}"{keys[-1]}', f" {literal(rng)}}}\n"),
        (f'{start}[{entries[","]}"{keys[-1]}', f" {literal(rng)}]\n"),
    )
