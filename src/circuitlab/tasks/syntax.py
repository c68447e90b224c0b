"""Statements and keywords: what a line's first words decide about how it continues."""

from __future__ import annotations

import random

from circuitlab.tasks.codegen import (
    CLASSES,
    FUNCTIONS,
    INDENT,
    MODULES,
    VARIABLES,
    following,
    frame,
    if_before_elif,
    literal,
    pick_name,
    sentence,
    statement,
    statements,
)
from circuitlab.tasks.core import FramedPair, Instance, define_framed_task, define_task, same_rest


@define_task(
    "bool_flip",
    (" True", " False"),
    "Inside `if not flag:` the flag is set ` True`, inside `if flag:` it is set ` False`.",
)
def _bool_flip(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    flag = rng.choice(("done", "found", "ready", "seen", "changed", "valid", "active", "enabled", "is_set", "ok"))
    init = f"{indent}{flag} = {rng.choice(('True', 'False'))}\n" if rng.random() < 0.6 else ""
    between = statements(rng, indent, 0, 2, {flag})
    inner = statements(rng, indent + INDENT, 0, 1, {flag})
    rest = "\n" + following(rng, indent + INDENT, {flag})
    prompts = [f"{head}{init}{between}{indent}if {neg}{flag}:\n{inner}{indent}{INDENT}{flag} =" for neg in ("not ", "")]
    return same_rest(rest, *prompts)


@define_framed_task(
    "compare_or_assign",
    (" ==", " ="),
    "After an attribute in an `if`/`while`/`assert` condition comes ` ==`; after one starting a statement, ` =`.",
)
def _compare_or_assign(rng: random.Random, indent: str) -> FramedPair:
    owner = "self" if indent == INDENT * 2 else pick_name(rng)
    attribute = f"{owner}.{rng.choice(('count', 'name', 'state', 'mode', 'size', 'value', 'status', 'level'))}"
    keyword = rng.choice(("if ", "if ", "while ", "assert ", "elif "))
    opening = if_before_elif(rng, indent) if keyword == "elif " else ""
    value = literal(rng)
    compare_rest = f" {value}" + (":\n" + statement(rng, indent + INDENT) if keyword != "assert " else "\n")
    return (
        (f"{opening}{keyword}{attribute}", compare_rest),
        (f"{opening}{attribute}", f" {value}\n{following(rng, indent)}"),
    )


@define_framed_task(
    "for_in_or_assign",
    (" in", " ="),
    "After `for a, b` comes ` in`; after the same names starting a statement (`a, b`), ` =`.",
)
def _for_in_or_assign(rng: random.Random, indent: str) -> FramedPair:
    names: list[str] = []
    while len(names) < rng.choice((2, 2, 3)):
        names.append(pick_name(rng, names))
    targets = ", ".join(names)
    source = rng.choice(
        (f"{pick_name(rng, names)}.items()", f"zip({', '.join(VARIABLES[: len(names)])})", f"{pick_name(rng, names)}")
    )
    return (
        (f"for {targets}", f" {source}:\n{statement(rng, indent + INDENT)}"),
        (targets, f" {source}\n{following(rng, indent)}"),
    )


@define_task(
    "self_or_cls",
    ("(cls", "(self"),
    "A method under `@classmethod` takes `(cls`; under another decorator or none, `(self`.",
)
def _self_or_cls(rng: random.Random) -> tuple[Instance, Instance]:
    cls = rng.choice(CLASSES)
    head = f"class {cls}:\n"
    if rng.random() < 0.5:
        head += f'{INDENT}"""{sentence(rng, 5).capitalize()}."""\n\n'
    if rng.random() < 0.6:
        head += f"{INDENT}def __init__(self, {pick_name(rng)}):\n{statements(rng, INDENT * 2, 1, 2)}\n"
    other = rng.choice(("@property", "@abstractmethod", "@functools.cache", "@override", None))
    other = f"{INDENT}{other}\n" if other else ""
    method = rng.choice(FUNCTIONS)
    args = "".join(f", {name}" for name in dict.fromkeys(pick_name(rng) for _ in range(rng.randint(0, 2))))
    rest = f"{args}):\n{statements(rng, INDENT * 2, 1, 2)}"
    return same_rest(rest, f"{head}{INDENT}@classmethod\n{INDENT}def {method}", f"{head}{other}{INDENT}def {method}")


@define_task(
    "from_import_or_as",
    (" import", " as"),
    "After `from <module>` comes ` import`; after `import <module>`, ` as` (in code that aliases imports).",
)
def _from_import_or_as(rng: random.Random) -> tuple[Instance, Instance]:
    head = "".join(
        rng.choice((f"import {rng.choice(MODULES)}\n", f"from {rng.choice(MODULES)} import {rng.choice(FUNCTIONS)}\n"))
        for _ in range(rng.randint(0, 4))
    )
    module = rng.choice(MODULES)
    alias = "".join(part[0] for part in module.split(".")) + rng.choice(("", "m", "lib"))
    return (
        Instance(f"{head}from {module}", f" {rng.choice(FUNCTIONS)}\n"),
        Instance(f"{head}import {module}", f" {alias}\n"),
    )


@define_framed_task(
    "dict_items_unpack",
    (".items", ":\n"),
    "`for key, value in d` continues with `.items` (two names unpack a dict's pairs); `for value in d`, with `:`.",
)
def _dict_items_unpack(rng: random.Random, indent: str) -> FramedPair:
    key = rng.choice(("key", "k", "name", "field", "word", "label", "attr"))
    value = pick_name(rng, {key})
    source = pick_name(rng, {key, value})
    body = statement(rng, indent + INDENT)
    return (f"for {key}, {value} in {source}", f"():\n{body}"), (f"for {value} in {source}", body)
