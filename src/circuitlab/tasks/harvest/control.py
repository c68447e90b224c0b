"""Natural instances of the control-flow tasks: what a line's keyword decides about the token after a name or
a condition, and how deep a loop's body is indented."""

from __future__ import annotations

import ast
import tokenize
from collections.abc import Iterator

from circuitlab.tasks.harvest.scan import Code, Cut, calls, constant, ends_of, harvests, named


@harvests("for_while")
def _loop_after_a_name(code: Code) -> Iterator[Cut]:
    """``for name`` goes on with `` in``; ``while name`` with ``:`` and the line's end."""
    yield from ends_of(code, ast.For, lambda loop: named(loop.target), 0)
    yield from ends_of(code, ast.While, lambda loop: named(loop.test), 1)


@harvests("else_elif")
def _else_or_elif(code: Code) -> Iterator[Cut]:
    """``else`` goes on with ``:`` and the line's end; ``elif`` with a condition (here one starting `` not``)."""
    for token in code.tokens:
        if token.type == tokenize.NAME and token.string in ("else", "elif"):
            yield code.offset(*token.end), ("else", "elif").index(token.string)


@harvests("if_ternary", continued_by=(":\n", " else"))
def _condition_of_if_or_ternary(code: Code) -> Iterator[Cut]:
    """After an ``if`` statement's condition comes ``:``; after a ternary's, `` else`` (whose first token, a
    space, is the candidate)."""
    yield from ends_of(code, ast.If, lambda statement: statement.test, 0)
    yield from ends_of(code, ast.IfExp, lambda expression: expression.test, 1)


@harvests("indent_for")
def _loop_body_indent(code: Code) -> Iterator[Cut]:
    """The first line of the body of a ``for`` loop at column 4 (indented 8) or at module level (indented 4)."""
    for loop in code.nodes(ast.For):
        column = code.start(loop) - code.line_start(loop.lineno)
        body = code.line_start(loop.body[0].lineno)
        if column in (4, 0) and loop.body[0].lineno > loop.lineno and code.text.startswith(":\n", body - 2):
            yield body, (4, 0).index(column)


@harvests("enumerate_range")
def _loop_source(code: Code) -> Iterator[Cut]:
    """``for ... in`` goes on with `` enumerate(...)`` or `` range(...)``."""
    for loop in code.nodes(ast.For):
        called = calls(loop.iter, "enumerate", "range")
        if called:
            yield code.start(loop.iter) - 1, ("enumerate", "range").index(called)


def _compared_name(statement: ast.If) -> ast.Name | None:
    """The ``name`` of ``if name <comparison> ...``, or None for any other condition."""
    test = statement.test
    return named(test.left) if isinstance(test, ast.Compare) else None


def _assigned_name(statement: ast.Assign) -> ast.Name | None:
    """The ``name`` of ``name = ...``, or None for any other assignment."""
    return named(statement.targets[0]) if len(statement.targets) == 1 else None


@harvests("if_equals")
def _compare_or_assign(code: Code) -> Iterator[Cut]:
    """``if name`` goes on with the comparison `` ==``; a statement starting ``name``, with the assignment `` =``."""
    yield from ends_of(code, ast.If, _compared_name, 0)
    yield from ends_of(code, ast.Assign, _assigned_name, 1)


def _compared_to_bool(statement: ast.If) -> ast.Compare | None:
    """The condition of ``if name <comparison> True`` (or ``False``), or None for any other."""
    test = statement.test
    if isinstance(test, ast.Compare) and named(test.left) and constant(test.comparators[-1], True, False):
        return test
    return None


@harvests("var_if")
def _line_ending_in_a_bool(code: Code) -> Iterator[Cut]:
    """``if name == True`` (or ``is``, ``!=``, ``False``) goes on with ``:``; ``name = True`` ends its line."""
    yield from ends_of(code, ast.If, _compared_to_bool, 0)
    yield from ends_of(code, ast.Assign, lambda s: constant(s.value, True, False) if _assigned_name(s) else None, 1)


@harvests("while_return_true")
def _while_or_return_true(code: Code) -> Iterator[Cut]:
    """``while True`` goes on with ``:``; ``return True`` ends its line."""
    yield from ends_of(code, ast.While, lambda loop: constant(loop.test, True), 0)
    yield from ends_of(code, ast.Return, lambda statement: constant(statement.value, True), 1)
