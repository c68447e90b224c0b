"""Seeded generator of short Python snippets rich in the patterns the tasks ask about.

Real code teaches a small model Python; these snippets make sure it also sees, often and in many variations,
each task's pattern with its correct continuation (strings closed by either quote, lists nested 1-2 deep,
variables initialised as ``set()`` or a string and used lines later ...). Task instances come only from the
*train* split of :mod:`circuitlab.tasks`, so no test prompt is ever training text. The rest is ordinary filler
code: functions, loops, classes, dicts, comprehensions, comments.
"""

from __future__ import annotations

import random

from circuitlab import tasks
from circuitlab.tasks.codegen import (
    CALLABLES,
    CLASSES,
    FUNCTIONS,
    INDENT,
    MODULES,
    WORDS,
    atom,
    literal,
    pick_name,
    sentence,
    statement,
    statements,
)

TASK_SNIPPET_FRACTION = 0.75
"""Share of snippets made of task instances (optionally followed by filler code); the rest is filler."""

TRAINING_MIX: dict[str, int] = {
    "single_double_quote": 4,
    "quote_in_call": 1,
    "quote_in_list": 1,
    "bracket_counting": 4,
    "paren_counting": 1,
    "close_tuple_or_list": 1,
    "close_set_or_list": 1,
    "paren_colon": 1,
    "condition_colon": 1,
    "dict_or_set_key": 1,
    "call_arity": 1,
    "set_or_string_one_var": 4,
    "set_or_string_fixedvarname_one_var": 1,
    "list_or_set": 1,
    "int_or_list": 1,
    "list_or_dict": 1,
    "bool_flip": 1,
    "compare_or_assign": 1,
    "for_in_or_assign": 1,
    "self_or_cls": 1,
    "from_import_or_as": 1,
    "enumerate_range": 1,
    "dict_items_unpack": 1,
}
"""The tasks whose train-split instances the snippets show, with their weights (the paper's three case studies
four times as often as the rest; set_or_string in its one-variable form). Frozen: the shipped tokenizer and models
were made from this text (tests/test_golden.py), so a task registered later is not drawn unless it is added here
on purpose."""

_MIX_TASKS = [tasks.get(name) for name in TRAINING_MIX]
_MIX_WEIGHTS = list(TRAINING_MIX.values())


def generate_snippets(n: int, seed: int) -> list[str]:
    """``n`` independent snippets, the same for the same seed (a private ``random.Random(seed)``)."""
    rng = random.Random(seed)
    return [_snippet(rng) for _ in range(n)]


def generate_text(n_chars: int, seed: int) -> str:
    """Snippets joined by blank lines until at least ``n_chars`` characters (deterministic in ``seed``)."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < n_chars:
        parts.append(_snippet(rng))
        length += len(parts[-1]) + 2
    return "\n\n".join(parts)


def _snippet(rng: random.Random) -> str:
    if rng.random() < TASK_SNIPPET_FRACTION:
        text = task_snippet(rng)
        if rng.random() < 0.3:
            text += "\n\n" + filler_snippet(rng)
        return text
    return filler_snippet(rng)


def task_snippet(rng: random.Random) -> str:
    """One to three train-split instances of a task of the mix, each with its correct answer and the lines
    after it, like a file that repeats a pattern with variations."""
    task = rng.choices(_MIX_TASKS, _MIX_WEIGHTS)[0]
    texts = []
    for _ in range(rng.randint(1, 3)):
        side = rng.randrange(2)
        instance = task.draw(rng, "train")[side]
        texts.append(instance.prompt + task.candidates[side] + instance.rest)
    return "\n".join(texts)


# ------------------------------------------------------------------------------------------------ filler


def filler_snippet(rng: random.Random) -> str:
    """Ordinary code: a function, a class, a loop, a data table or a block of statements."""
    kind = rng.choices(
        (_function, _class, _module_block, _data_table, _comprehensions, _try_block), (5, 2, 2, 2, 2, 1)
    )[0]
    return kind(rng)


def _condition(rng: random.Random, avoid: set[str]) -> str:
    var = pick_name(rng, avoid)
    return rng.choice(
        (
            f"{var}",
            f"not {var}",
            f"{var} is None",
            f"{var} == {literal(rng, avoid)}",
            f"{var} > {atom(rng, avoid, names_ok=False)}",
            f"{var} in {pick_name(rng, avoid)}",
            f"len({var}) < {atom(rng, avoid, names_ok=False)}",
            f"isinstance({var}, {rng.choice(('str', 'int', 'list', 'dict', 'set', 'tuple'))})",
        )
    )


def _block(rng: random.Random, indent: str, depth: int, avoid: set[str]) -> str:
    """A few statements, some of them compound (if / for / while / with) up to ``depth`` levels deep."""
    lines = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        inner = indent + INDENT
        if depth > 0 and roll < 0.2:
            lines.append(f"{indent}if {_condition(rng, avoid)}:\n{_block(rng, inner, depth - 1, avoid)}")
            if rng.random() < 0.4:
                lines.append(f"{indent}else:\n{_block(rng, inner, depth - 1, avoid)}")
        elif depth > 0 and roll < 0.35:
            var, source = pick_name(rng, avoid), pick_name(rng, avoid)
            var, source = rng.choice(
                (
                    (var, source),
                    (var, f"range({atom(rng, avoid)})"),
                    (f"i, {var}", f"enumerate({source})"),
                    (f"key, {var}", f"{source}.items()"),
                )
            )
            lines.append(f"{indent}for {var} in {source}:\n{_block(rng, inner, depth - 1, avoid)}")
        elif depth > 0 and roll < 0.4:
            lines.append(f"{indent}while {_condition(rng, avoid)}:\n{_block(rng, inner, depth - 1, avoid)}")
        elif depth > 0 and roll < 0.45:
            name = pick_name(rng, avoid)
            handle = rng.choice(("f", "fh", "stream"))
            mode = rng.choice(('"r"', "'w'", "'rb'"))
            lines.append(
                f"{indent}with open({name}, {mode}) as {handle}:\n{inner}{pick_name(rng, avoid)} = {handle}.read()\n"
            )
        else:
            lines.append(statement(rng, indent, avoid))
    return "".join(lines)


def _params(rng: random.Random) -> list[str]:
    params = list(dict.fromkeys(pick_name(rng) for _ in range(rng.randint(0, 3))))
    if params and rng.random() < 0.3:
        params[-1] += f"={rng.choice(('None', 'True', 'False', '0', '1', repr(rng.choice(WORDS))))}"
    return params


def _function(rng: random.Random, indent: str = "", method: bool = False) -> str:
    params = _params(rng)
    if method:
        params = ["self", *params]
    text = f"{indent}def {rng.choice(FUNCTIONS)}({', '.join(params)}):\n"
    body = indent + INDENT
    if rng.random() < 0.5:
        text += f'{body}"""{sentence(rng, 8).capitalize()}."""\n'
    text += _block(rng, body, 2, {"self"})
    if rng.random() < 0.7:
        text += f"{body}return {literal(rng, {'self'})}\n"
    return text


def _class(rng: random.Random) -> str:
    name = rng.choice(CLASSES)
    base = rng.choice(("", "", "(object)", "(Exception)", "(Base)"))
    text = f"class {name}{base}:\n"
    if rng.random() < 0.5:
        text += f'{INDENT}"""{sentence(rng, 8).capitalize()}."""\n\n'
    fields = [pick_name(rng, {"self"}) for _ in range(rng.randint(1, 3))]
    text += f"{INDENT}def __init__(self, {', '.join(dict.fromkeys(fields))}):\n"
    text += "".join(f"{INDENT * 2}self.{f} = {f}\n" for f in dict.fromkeys(fields))
    for _ in range(rng.randint(1, 3)):
        text += "\n"
        if rng.random() < 0.5:
            text += f"{INDENT}@classmethod\n{INDENT}def {rng.choice(FUNCTIONS)}(cls, {pick_name(rng)}):\n"
            text += f"{INDENT * 2}return cls({literal(rng)})\n"
        else:
            text += f"{INDENT}@property\n" if rng.random() < 0.15 else ""
            text += _function(rng, INDENT, method=True)
    return text


def _module_block(rng: random.Random) -> str:
    imports = "".join(
        rng.choice(
            (
                f"import {rng.choice(MODULES)}\n",
                f"from {rng.choice(MODULES)} import {rng.choice(FUNCTIONS)}\n",
                f"import {rng.choice(('numpy', 'pandas', 'torch'))} as {rng.choice(('np', 'pd', 'th'))}\n",
            )
        )
        for _ in range(rng.randint(0, 3))
    )
    return imports + ("\n" if imports else "") + _block(rng, "", 2, set())


def _data_table(rng: random.Random) -> str:
    """Module-level constants (upper-case names) and lookups: dicts, rows of lists, string sets, nested lists."""
    var = pick_name(rng).upper()
    roll = rng.random()
    if roll < 0.25:
        keys = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
        entries = ", ".join(f'"{key}": {literal(rng)}' for key in keys)
        lookups = "".join(f'{pick_name(rng)} = {var}["{key}"]\n' for key in keys[: rng.randint(0, 3)])
        return f"{var} = {{{entries}}}\n{lookups}"
    if roll < 0.4:
        rows = [f"{INDENT}[{', '.join(atom(rng) for _ in range(rng.randint(1, 4)))}],\n" for _ in range(3)]
        return f"{var} = [\n{''.join(rows)}]\n"
    if roll < 0.55:
        quote = rng.choice("'\"")
        items = ", ".join(f"{quote}{rng.choice(WORDS)}{quote}" for _ in range(rng.randint(1, 6)))
        opener, closer = rng.choice((("{", "}"), ("[", "]"), ("(", ")"), ("frozenset({", "})")))
        return f"{var} = {opener}{items}{closer}\n"
    lines: list[str] = []
    for _ in range(rng.randint(1, 4)):
        inner = (f"[{', '.join(atom(rng) for _ in range(rng.randint(1, 3)))}]" for _ in range(rng.randint(1, 3)))
        lines.append(f"{var}{len(lines) or ''} = [{', '.join(inner)}]\n")
    return "".join(lines)


def _comprehensions(rng: random.Random) -> str:
    var, item, source = pick_name(rng), pick_name(rng), pick_name(rng)
    func = rng.choice(FUNCTIONS + CALLABLES)
    lines = [
        f"{var} = [{func}({item}) for {item} in {source}]\n",
        f"{var} = {{{item}: {func}({item}) for {item} in {source}}}\n",
        f"{var} = {{{item} for {item} in {source} if {item}}}\n",
        f"{var} = sum({item}.{rng.choice(('size', 'count', 'value'))} for {item} in {source})\n",
        f"{var} = {rng.choice(('sorted', 'list', 'set', 'tuple'))}({source})\n",
    ]
    rng.shuffle(lines)
    return "".join(lines[: rng.randint(1, len(lines))])


def _try_block(rng: random.Random) -> str:
    error = rng.choice(("ValueError", "KeyError", "TypeError", "OSError", "IndexError", "Exception"))
    text = f"try:\n{statements(rng, INDENT, 1, 3)}except {error}"
    text += rng.choice((":\n", " as exc:\n", " as error:\n"))
    text += rng.choice((f"{INDENT}pass\n", f"{INDENT}raise\n", statement(rng, INDENT)))
    if rng.random() < 0.3:
        text += f"else:\n{statements(rng, INDENT, 1, 2)}"
    if rng.random() < 0.2:
        text += f"finally:\n{statements(rng, INDENT, 1, 2)}"
    return text
