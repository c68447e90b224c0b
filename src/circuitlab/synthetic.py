"""Seeded generator of short Python snippets rich in the patterns the tasks ask about.

Real code teaches a small model Python; these snippets make sure it also sees, often and in many variations,
each task's pattern with its correct continuation (strings closed by either quote, lists nested 1-2 deep,
variables initialised as ``set()`` or a string and used lines later ...). Task instances come only from the
*train* split of :mod:`circuitlab.tasks`, so no test prompt is ever training text. The rest is ordinary filler
code: functions, loops, classes, dicts, comprehensions, comments.

A `Mix` says how much of each: `TEMPLATES`, the frozen mix of the shipped models (two thirds of their training
rows are literal task instances, so they learn the templates), and `PYTHON`, the paper's twenty tasks at most
once per snippet, inside generated code, in half the snippets. `circuitlab.build` writes one token stream per mix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
"""The tasks whose train-split instances the `templates` mix shows, with their weights (the paper's three case
studies four times as often as the rest; set_or_string in its one-variable form)."""


@dataclass(frozen=True)
class Mix:
    """What a synthetic stream is made of: a `task_fraction` of its snippets hold train-split task instances
    (`instances` of one task, drawn with `task_weights`); the rest is task-free filler code. With `in_code`, each
    instance sits inside generated code (filler before it, sometimes after), as a pattern does in a real file."""

    name: str
    task_weights: dict[str, int]
    task_fraction: float
    instances: tuple[int, int]
    in_code: bool

    def tasks_and_weights(self) -> tuple[list[tasks.Task], list[int]]:
        return [tasks.get(name) for name in self.task_weights], list(self.task_weights.values())


TEMPLATES = Mix("templates", TRAINING_MIX, task_fraction=0.75, instances=(1, 3), in_code=False)
"""The mix the shipped tokenizer and models were made from (tests/test_golden.py freezes its text): about two
thirds of training rows (90 % synthetic x 75 % task snippets) are literal task instances, repeated 1-3 times."""
PYTHON = Mix(
    "python",
    {**dict.fromkeys(tasks.PAPER_TASKS, 2), **{name: 1 for name in TRAINING_MIX if name not in tasks.PAPER_TASKS}},
    task_fraction=0.5,
    instances=(1, 1),
    in_code=True,
)
"""A mix that teaches Python rather than templates: the paper's twenty tasks (twice the weight of the extra
ones), one instance per snippet, always inside generated code; half the snippets are task-free. With
`synthetic_fraction` 0.55 (configs/sparse_python.yaml) about 27 % of training rows come from task snippets."""
CASE_STUDY_TASKS = ("single_double_quote", "bracket_counting", "set_or_string", "set_or_string_fixedvarname")
PYTHON_CASE_STUDIES = Mix(
    "python_case_studies",
    {**PYTHON.task_weights, **dict.fromkeys(CASE_STUDY_TASKS, 6)},
    task_fraction=0.5,
    instances=(1, 1),
    in_code=True,
)
"""The python mix with the paper's three case studies (both forms of the variable-type task) three times as
often as its other tasks: on the python mix the sparse model fell from 99 % to 90 % on bracket_counting, which
the templates mix showed in 8.4 % of its rows and the python mix in 0.9 %."""
PYTHON_FOCUS = Mix(
    "python_focus",
    {**PYTHON.task_weights, **dict.fromkeys(CASE_STUDY_TASKS, 16), "set_or_string_one_var": 8},
    task_fraction=0.5,
    instances=(2, 4),
    in_code=True,
)
"""The python mix with the case studies eight times as often as the paper's other tasks (the one-variable
set_or_string, a stepping stone, four times) and 2-4 instances of the drawn task per snippet, still inside
generated code. Rows are what the issue counts, but text is what the model learns from: the python mixes put
27.5 % of rows but only 0.2-1.1 % of the text into each case study, against 5-8 % in the templates mix. This one
puts about 2 % (quotes, brackets) to 4 % (each two-variable set_or_string) there, with
`synthetic_fraction` 0.58 (29 % of rows from task snippets)."""
MIXES = {mix.name: mix for mix in (TEMPLATES, PYTHON, PYTHON_CASE_STUDIES, PYTHON_FOCUS)}


def get_mix(name: str) -> Mix:
    if name not in MIXES:
        raise ValueError(f"unknown synthetic mix {name!r}; choose one of {sorted(MIXES)}")
    return MIXES[name]


def generate_snippets(n: int, seed: int, mix: Mix = TEMPLATES) -> list[str]:
    """``n`` independent snippets, the same for the same seed (a private ``random.Random(seed)``)."""
    rng = random.Random(seed)
    return ["".join(text for text, _ in snippet_pieces(rng, mix)) for _ in range(n)]


def generate_text(n_chars: int, seed: int, mix: Mix = TEMPLATES) -> str:
    """Snippets joined by blank lines until at least ``n_chars`` characters (deterministic in ``seed``)."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < n_chars:
        parts.append("".join(text for text, _ in snippet_pieces(rng, mix)))
        length += len(parts[-1]) + 2
    return "\n\n".join(parts)


def literal_share(mix: Mix, n: int = 2000, seed: int = 0) -> float:
    """The share of a mix's synthetic text (in characters) that lies inside task instances: prompt, answer and
    the lines after it."""
    rng = random.Random(seed)
    pieces = [piece for _ in range(n) for piece in snippet_pieces(rng, mix)]
    return sum(len(text) for text, literal in pieces if literal) / sum(len(text) for text, _ in pieces)


def snippet_pieces(rng: random.Random, mix: Mix) -> list[tuple[str, bool]]:
    """One snippet as pieces of text, each marked True when it is part of a task instance."""
    if rng.random() >= mix.task_fraction:
        return [(filler_snippet(rng), False)]
    if not mix.in_code:
        pieces = _task_pieces(rng, mix)
        if rng.random() < 0.3:
            pieces.append(("\n\n" + filler_snippet(rng), False))
        return pieces
    pieces = [(filler_snippet(rng) + "\n", False), *_task_pieces(rng, mix)]
    if rng.random() < 0.5:
        pieces.append(("\n" + filler_snippet(rng), False))
    return pieces


def task_snippet(rng: random.Random, mix: Mix = TEMPLATES) -> str:
    """Train-split instances of one task of the mix, each with its correct answer and the lines after it (the
    templates mix repeats the pattern 1-3 times, like a file that repeats it with variations)."""
    return "".join(text for text, _ in _task_pieces(rng, mix))


def _task_pieces(rng: random.Random, mix: Mix) -> list[tuple[str, bool]]:
    task_list, weights = mix.tasks_and_weights()
    task = rng.choices(task_list, weights)[0]
    pieces: list[tuple[str, bool]] = []
    for i in range(rng.randint(*mix.instances)):
        side = rng.randrange(2)
        instance = task.draw(rng, "train")[side]
        if i:
            pieces.append(("\n", False))
        pieces.append((instance.prompt + task.candidates[side] + instance.rest, True))
    return pieces


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
