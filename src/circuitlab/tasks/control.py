"""Conditions and loops: what a line's keyword and names decide about how it continues or is indented."""

from __future__ import annotations

import random

from circuitlab.tasks.codegen import FUNCTIONS, INDENT, atom, following, literal, pick_name, statement, statements
from circuitlab.tasks.core import FramedPair, Instance, define_framed_task, define_task


def _condition(rng: random.Random) -> str:
    """A condition that ends in a name or a number, so ``:`` after it is a pre-token of its own."""
    var, other = pick_name(rng), pick_name(rng)
    return rng.choice((var, f"not {var}", f"{var} > {atom(rng)}", f"{var} in {other}", f"{var} is None"))


def _function_head(rng: random.Random, low: int) -> str:
    """A module-level `def` line and ``low`` to 3 lines of its body."""
    params = ", ".join(dict.fromkeys(pick_name(rng) for _ in range(rng.randint(0, 3))))
    return f"def {rng.choice(FUNCTIONS)}({params}):\n{statements(rng, INDENT, low, 3)}"


def _block(rng: random.Random, indent: str) -> str:
    """The indented lines of a block opened at ``indent``."""
    return statements(rng, indent + INDENT, 1, 2)


@define_framed_task(
    "for_while",
    (" in", ":\n"),
    "After `for name` comes ` in`; after `while name`, the condition is complete and `:` follows.",
)
def _for_while(rng: random.Random, indent: str) -> FramedPair:
    name = pick_name(rng)
    body = _block(rng, indent)
    return (f"for {name}", f" {pick_name(rng, {name})}:\n{body}"), (f"while {name}", body)


@define_framed_task(
    "else_elif",
    (":\n", " not"),
    "`else` takes `:` at once; `elif` takes a condition first (here one starting ` not`: the paper compares `:` "
    "with anything else, and the task loss needs one token for that).",
)
def _else_elif(rng: random.Random, indent: str) -> FramedPair:
    opened = f"if {_condition(rng)}:\n{_block(rng, indent)}{indent}"
    body = _block(rng, indent)
    return (f"{opened}else", body), (f"{opened}elif", f" not {pick_name(rng)}:\n{body}")


@define_framed_task(
    "if_ternary",
    (":\n", " "),
    "After an `if` statement's condition comes `:`; after the condition of a ternary `a if c else b`, ` else`. "
    "Our tokenizer has no ` else` token (it splits into a space and `else`), so the candidate is that space.",
)
def _if_ternary(rng: random.Random, indent: str) -> FramedPair:
    condition = _condition(rng)
    chosen = f"{pick_name(rng)} = {atom(rng)} "
    return (f"if {condition}", _block(rng, indent)), (f"{chosen}if {condition}", f"else {atom(rng)}\n")


@define_task(
    "indent_for",
    (INDENT * 2, INDENT),
    "The body of a `for` loop inside a function is indented 8 spaces; after a `for` at module level (below the "
    "function), 4.",
)
def _indent_for(rng: random.Random) -> tuple[Instance, Instance]:
    function = _function_head(rng, 1) + "\n"
    var = pick_name(rng)
    source = rng.choice((pick_name(rng, {var}), f"range({atom(rng, {var})})", f"{pick_name(rng, {var})}.items()"))
    loops = [f"{function}{indent}for {var} in {source}:\n" for indent in (INDENT, "")]
    rests = [statement(rng, indent)[len(indent) :] for indent in (INDENT * 2, INDENT)]
    return Instance(loops[0], rests[0]), Instance(loops[1], rests[1])


@define_framed_task(
    "enumerate_range",
    (" enumerate", " range"),
    "`for i, x in` iterates ` enumerate(...)`, `for i in` iterates ` range(...)`: two loop names or one (the paper's "
    "task; called range_or_enumerate before).",
)
def _enumerate_range(rng: random.Random, indent: str) -> FramedPair:
    index = rng.choice(("i", "j", "k", "idx", "index", "n", "pos", "row"))
    item = pick_name(rng, {index})
    source = pick_name(rng, {index, item})
    body = statement(rng, indent + INDENT)
    return (f"for {index}, {item} in", f"({source}):\n{body}"), (f"for {index} in", f"(len({source})):\n{body}")


@define_framed_task(
    "if_equals",
    (" ==", " ="),
    "After `if name` comes the comparison ` ==`; after `name` starting a statement, the assignment ` =`.",
)
def _if_equals(rng: random.Random, indent: str) -> FramedPair:
    var = pick_name(rng)
    value = literal(rng, {var})
    return (f"if {var}", f" {value}:\n{_block(rng, indent)}"), (var, f" {value}\n{following(rng, indent)}")


@define_framed_task(
    "var_if",
    (":\n", "\n"),
    "`if x == True` ends its line with `:`, the assignment `x = True` with a newline (also with `False`).",
)
def _var_if(rng: random.Random, indent: str) -> FramedPair:
    var = pick_name(rng)
    value = rng.choice(("True", "True", "False"))
    return (f"if {var} == {value}", _block(rng, indent)), (f"{var} = {value}", following(rng, indent))


@define_task(
    "while_return_true",
    (":\n", "\n"),
    "`while True` opens an indented block with `:`; `return True` ends its line.",
)
def _while_return_true(rng: random.Random) -> tuple[Instance, Instance]:
    head = _function_head(rng, 0)
    indent = INDENT
    if rng.random() < 0.4:
        head += f"{indent}if {_condition(rng)}:\n"
        indent += INDENT
    return (
        Instance(f"{head}{indent}while True", _block(rng, indent)),
        Instance(f"{head}{indent}return True", ""),
    )
