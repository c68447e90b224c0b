"""Variables and their types: a name's initialiser, or a function's definition, decides how it is used later."""

from __future__ import annotations

import random

from circuitlab.tasks.codegen import (
    CLASSES,
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
from circuitlab.tasks.core import Instance, define_task, same_rest


def _typed_variable_pair(
    rng: random.Random, inits: tuple[str, str], uses: tuple[str, str], var: str | None = None, rival: bool = False
) -> tuple[Instance, Instance]:
    """``var = inits[i]``, a few unrelated lines, then ``var`` at the start of a line, to be continued by
    ``uses[i]``, the use that fits its type (the paper's set_or_string shape: a two-hop name -> type lookup).

    With ``rival``, a second variable is given the other initialiser (before or after ``var``, with unrelated
    lines between), so neither the nearest nor the only initialiser gives the answer: only the name does.
    """
    head, indent = frame(rng)
    var = var or pick_name(rng)
    names = {var}
    if rival:
        other = pick_name(rng, names)
        names.add(other)
        other_first = rng.random() < 0.5
        gap = statements(rng, indent, 0, 2, names)
    between = statements(rng, indent, 1, 4, names)
    use_indent = indent
    if rng.random() < 0.4:
        loop_var = pick_name(rng, names)
        between += f"{indent}for {loop_var} in {pick_name(rng, names | {loop_var})}:\n"
        use_indent = indent + INDENT
        between += statements(rng, use_indent, 0, 1, names)
    value = literal(rng, names)
    key = rng.choice(WORDS)
    tail = f"{indent}return {var}\n" if indent and rng.random() < 0.5 else ""

    def initialise(i: int) -> str:
        lines = [f"{indent}{var} = {inits[i]}\n"]
        if rival:
            lines.insert(0 if other_first else 1, f"{indent}{other} = {inits[1 - i]}\n")
            lines.insert(1, gap)
        return "".join(lines)

    first, second = (
        Instance(f"{head}{initialise(i)}{between}{use_indent}{var}", _rest_of_use(uses[i], value, key) + tail)
        for i in range(2)
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
    'After `x = set()` and `y = ""` (or the other way round) and a few lines, continue `x` with `.add` if it '
    "holds the set, ` +=` if the string (the paper's task: the name -> initialiser -> use lookup).",
)
def _set_or_string(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("set()", _string_init(rng)), (".add", " +="), rival=True)


@define_task(
    "set_or_string_fixedvarname",
    (".add", " +="),
    "set_or_string with the used variable always called `x` (the other one varies).",
)
def _set_or_string_fixedvarname(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("set()", _string_init(rng)), (".add", " +="), var="x", rival=True)


@define_task(
    "set_or_string_one_var",
    (".add", " +="),
    'set_or_string without the second variable: after `x = set()` or `x = ""`, `.add` or ` +=`. The shipped '
    "models were trained on this form; the nearest initialiser alone gives the answer.",
)
def _set_or_string_one_var(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("set()", _string_init(rng)), (".add", " +="))


@define_task(
    "set_or_string_fixedvarname_one_var",
    (".add", " +="),
    "set_or_string_one_var with the variable always called `x` (the shipped models' training form).",
)
def _set_or_string_fixedvarname_one_var(rng: random.Random) -> tuple[Instance, Instance]:
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


@define_task(
    "class_init",
    (" name", " value"),
    "Inside an `__init__` full of `self.x = x` lines, copy the attribute's name after `=`: `self.name =` is "
    "continued by ` name`, `self.value =` by ` value` (two fixed names, as the task loss needs two tokens).",
)
def _class_init(rng: random.Random) -> tuple[Instance, Instance]:
    answers = ("name", "value")
    fields = list(dict.fromkeys(pick_name(rng, {*answers, "self"}) for _ in range(rng.randint(1, 4))))
    params = [*fields, *answers]
    rng.shuffle(params)
    assigned = rng.sample(fields, rng.randint(0, len(fields)))
    header = f"class {rng.choice(CLASSES)}:\n{INDENT}def __init__(self, {', '.join(params)}):\n"
    prompt = header + _self_assignments(assigned) + f"{INDENT * 2}self."
    remaining = [field for field in params if field not in assigned]
    first, second = (
        Instance(f"{prompt}{answer} =", "\n" + _self_assignments([f for f in remaining if f != answer]))
        for answer in answers
    )
    return first, second


def _self_assignments(fields: list[str]) -> str:
    return "".join(f"{INDENT * 2}self.{field} = {field}\n" for field in fields)


@define_task(
    "var_swap",
    (" x", " y"),
    "Swapping two variables, `x, y = y,` ends with ` x` and `y, x = x,` with ` y` (the paper's task).",
)
def _var_swap(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng, {"x", "y"})
    setup = ""
    if rng.random() < 0.6:  # both get values first, in either order
        setup = "".join(f"{indent}{name} = {atom(rng, {'x', 'y'})}\n" for name in rng.sample(("x", "y"), 2))
        setup += statements(rng, indent, 0, 2, {"x", "y"})
    rest = "\n" + following(rng, indent)
    return same_rest(rest, *(f"{head}{setup}{indent}{a}, {b} = {b}," for a, b in (("x", "y"), ("y", "x"))))
