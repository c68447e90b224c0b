"""Variables and their types: a name's initialiser, or a function's definition, decides how it is used later."""

from __future__ import annotations

import random

from circuitlab.tasks.codegen import (
    FUNCTIONS,
    INDENT,
    WORDS,
    atom,
    following,
    frame,
    literal,
    pick_name,
    statements,
)
from circuitlab.tasks.core import Instance, define_task


def _typed_variable_pair(
    rng: random.Random, inits: tuple[str, str], uses: tuple[str, str], var: str | None = None
) -> tuple[Instance, Instance]:
    """``var = inits[i]``, a few unrelated lines, then ``var`` at the start of a line, to be continued by
    ``uses[i]``, the use that fits its type (the paper's set_or_string shape: a two-hop name -> type lookup)."""
    head, indent = frame(rng)
    var = var or pick_name(rng)
    between = statements(rng, indent, 1, 4, {var})
    use_indent = indent
    if rng.random() < 0.4:
        loop_var = pick_name(rng, {var})
        between += f"{indent}for {loop_var} in {pick_name(rng, {var, loop_var})}:\n"
        use_indent = indent + INDENT
        between += statements(rng, use_indent, 0, 1, {var})
    value = literal(rng, {var})
    key = rng.choice(WORDS)
    tail = f"{indent}return {var}\n" if indent and rng.random() < 0.5 else ""
    first, second = (
        Instance(f"{head}{indent}{var} = {init}\n{between}{use_indent}{var}", _rest_of_use(use, value, key) + tail)
        for init, use in zip(inits, uses, strict=True)
    )
    return first, second


def _rest_of_use(use: str, value: str, key: str) -> str:
    """What follows the candidate token ``use`` on its line: ``.add(value)``, `` += value``, ``["key"] = value``."""
    if use.startswith("."):
        return f"({value})\n"
    if use == '["':
        return f'{key}"] = {value}\n'
    return f" {value}\n"


def _string_init(rng: random.Random) -> str:
    return rng.choice(('""', '""', '""', "''", f'"{rng.choice(WORDS)}"'))


@define_task(
    "call_arity",
    (")\n", ","),
    "Call a function defined earlier: after as many arguments as it has parameters `)`, otherwise `,`.",
)
def _call_arity(rng: random.Random) -> tuple[Instance, Instance]:
    func = rng.choice(FUNCTIONS)
    n_args = rng.randint(1, 3)
    params: list[str] = []
    while len(params) <= n_args:
        params.append(pick_name(rng, params))
    middle = statements(rng, "", 0, 3, {func})
    var = pick_name(rng)
    args = ", ".join(atom(rng) for _ in range(n_args))
    call = f"{middle}{var} = {func}({args}"
    extra = atom(rng)
    prompts = [
        f"def {func}({', '.join(params[:k])}):\n{INDENT}return {' + '.join(params[:k])}\n\n{call}"
        for k in (n_args, n_args + 1)
    ]
    return Instance(prompts[0], following(rng, "")), Instance(prompts[1], f" {extra})\n")


@define_task(
    "set_or_string",
    (".add", " +="),
    'After `x = set()` or `x = ""` and a few lines, continue `x` with `.add` or ` +=` (the paper\'s task).',
)
def _set_or_string(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("set()", _string_init(rng)), (".add", " +="))


@define_task(
    "set_or_string_fixedvarname",
    (".add", " +="),
    "set_or_string with the variable always called `x`, so only its initialisation can decide.",
)
def _set_or_string_fixedvarname(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("set()", _string_init(rng)), (".add", " +="), var="x")


@define_task(
    "list_or_set",
    (".append", ".add"),
    "After `x = []` or `x = set()` and a few lines, continue `x` with `.append` or `.add`.",
)
def _list_or_set(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, (rng.choice(("[]", "[]", "list()")), "set()"), (".append", ".add"))


@define_task(
    "int_or_list",
    (" +=", ".append"),
    "After `x = 0` or `x = []` and a few lines, continue `x` with ` +=` or `.append`.",
)
def _int_or_list(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, (rng.choice(("0", "0", "1", "0.0")), "[]"), (" +=", ".append"))


@define_task(
    "list_or_dict",
    (".append", '["'),
    'After `x = []` or `x = {}` and a few lines, continue `x` with `.append` or a string subscript `["`.',
)
def _list_or_dict(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("[]", rng.choice(("{}", "{}", "dict()"))), (".append", '["'))
