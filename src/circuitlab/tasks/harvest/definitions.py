"""Natural instances of the definition tasks: signatures, lambdas, and how a file is opened."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from circuitlab.tasks.harvest.scan import Code, Cut, calls, harvests


@harvests("final_kwarg")
def _parameter_after_a_parameter(code: Code) -> Iterator[Cut]:
    """A positional parameter after another one: after a parameter with a default it takes one too (here
    ``=None``); after parameters without any, the signature may close (``):`` and the line's end)."""
    for function in code.functions():
        parameters = function.args.posonlyargs + function.args.args
        first_default = len(parameters) - len(function.args.defaults)
        for position, parameter in enumerate(parameters[1:], start=1):
            yield code.name_end(parameter), 0 if position > first_default else 1


@harvests("lambda_func")
def _lambda_or_def_name(code: Code) -> Iterator[Cut]:
    """``lambda name`` (its only parameter) goes on with ``:``; ``def name`` with its parameters (here none,
    ``():`` and the line's end)."""
    for function in code.nodes(ast.Lambda):
        if len(function.args.args) == 1:
            yield code.name_end(function.args.args[0]), 0
    for definition in code.nodes(ast.FunctionDef):
        start = code.start(definition)
        if code.text.startswith(f"def {definition.name}", start):
            yield start + len(f"def {definition.name}"), 1


def _opens_a_file(node: ast.AST) -> bool:
    """Whether ``node`` calls the builtin ``open``."""
    return calls(node, "open") is not None


@harvests("with_as")
def _open_in_with_or_assignment(code: Code) -> Iterator[Cut]:
    """The closing parenthesis of ``open(...)``: in a ``with`` statement `` as`` follows, so ``)`` alone; as an
    assigned value the line ends, ``)`` and a newline."""
    for statement in code.nodes(ast.With):
        for item in statement.items:
            if _opens_a_file(item.context_expr):
                yield code.end(item.context_expr) - 1, 0
    for assignment in code.nodes(ast.Assign):
        if _opens_a_file(assignment.value):
            yield code.end(assignment.value) - 1, 1


@harvests("with_open")
def _open_mode(code: Code) -> Iterator[Cut]:
    """The first letter of a literal mode passed to ``open``: ``r`` to read, ``w`` to write."""
    for call in filter(_opens_a_file, code.nodes(ast.Call)):
        for mode in call.args[1:2] + [keyword.value for keyword in call.keywords if keyword.arg == "mode"]:
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and mode.value[:1] in ("r", "w"):
                start = code.start(mode)
                if code.text[start] in "'\"":
                    yield start + 1, ("r", "w").index(mode.value[0])
