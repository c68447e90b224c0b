"""Natural instances of the bracket tasks: how deep a list is, and whether a string sits in a dict or a list."""

from __future__ import annotations

import ast
import tokenize
from collections.abc import Iterable, Iterator

from circuitlab.tasks.harvest.scan import Code, Cut, harvests

_KEYWORDS = frozenset(("in", "return", "yield", "and", "or", "not", "if", "else", "is", "lambda", "await", "assert"))
"""Keywords after which ``[`` opens a list, not a subscript."""


def _opens_subscript(previous: tokenize.TokenInfo | None) -> bool:
    """Whether ``[`` after this token subscripts it (``a[``, ``f()[``, ``"ab"[``) rather than opening a list."""
    if previous is None:
        return False
    return (
        (previous.type == tokenize.NAME and previous.string not in _KEYWORDS)
        or previous.type == tokenize.STRING
        or previous.string in (")", "]")
    )


@harvests("bracket_counting")
def _list_closing_a_line(code: Code) -> Iterator[Cut]:
    """A list literal, nested one or two lists deep, that ends its line after an element ending in a word:
    closed by ``]]`` at depth 2, ``]`` at depth 1."""
    is_list: list[bool] = []  # per open bracket
    previous = None
    for token in code.tokens:
        if token.type == tokenize.OP and token.string in ("(", "[", "{"):
            is_list.append(token.string == "[" and not _opens_subscript(previous))
        elif token.type == tokenize.OP and token.string in (")", "]", "}"):
            start = code.offset(*token.start)
            if len(is_list) in (1, 2) and all(is_list) and code.after_word(start):
                yield start, 2 - len(is_list)
            if is_list:
                is_list.pop()
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token


@harvests("bracket_brace")
def _dict_key_or_list_element(code: Code) -> Iterator[Cut]:
    """A double-quoted string ending with a word: a dict's key (closed by ``":``) or a list's element (``",``)."""
    for close in _closing_quotes(code, (key for literal in code.nodes(ast.Dict) for key in literal.keys)):
        yield close, 0
    for close in _closing_quotes(code, (element for literal in code.nodes(ast.List) for element in literal.elts)):
        yield close, 1


def _closing_quotes(code: Code, nodes: Iterable[ast.expr | None]) -> Iterator[int]:
    """The offset of the closing ``"`` of each string among ``nodes`` that is double-quoted and ends with a word."""
    for node in nodes:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            close = code.end(node) - 1
            if code.text[close] == '"' and code.after_word(close):
                yield close
