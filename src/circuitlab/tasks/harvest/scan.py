"""What every harvester shares: one file's code read once (syntax tree, tokens, pre-tokens, offsets) and the
registry of harvesters.

A harvester finds *cuts* in a file: a character offset where a task's question is asked and the index of the
candidate the code then writes. :func:`circuitlab.tasks.harvest.harvest_source` keeps a cut only when the code
really goes on with that candidate as its next pre-token (:attr:`Code.pretokens`), so a natural prompt ends on a
token boundary and its target is the token the model would have to predict.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from circuitlab.tokenizer import PRETOKENIZE_PATTERN

_PRETOKEN = re.compile(PRETOKENIZE_PATTERN)

Node = TypeVar("Node", bound=ast.AST)

Cut = tuple[int, int]
"""(offset where the prompt ends, index in the task's candidates of the answer the code goes on with)."""


class Code:
    """One file's source, parsed: its syntax tree and tokens (SyntaxError, tokenize.TokenError or, before Python
    3.12, ValueError for code that is not Python), pre-tokens and line offsets computed on first use."""

    def __init__(self, text: str):
        self.text = text
        self.tree = ast.parse(text)
        self.tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))

    @cached_property
    def pretokens(self) -> dict[int, str]:
        """Each pre-token of the text (the tokenizer's splitting rule, before BPE) by its start offset."""
        return {match.start(): match.group() for match in _PRETOKEN.finditer(self.text)}

    @cached_property
    def _lines(self) -> list[str]:
        return self.text.splitlines(keepends=True)

    @cached_property
    def _line_starts(self) -> list[int]:
        """Offset of each line's start; index 0 is a dummy so that ``[lineno]`` works."""
        starts = [0, 0]
        for line in self._lines:
            starts.append(starts[-1] + len(line))
        return starts

    def offset(self, lineno: int, column: int) -> int:
        """The offset of a (line, character column) position, as :mod:`tokenize` gives them."""
        return self._line_starts[lineno] + column

    def line_start(self, lineno: int) -> int:
        return self._line_starts[lineno]

    def start(self, node: ast.AST) -> int:
        """Where a syntax node starts (:mod:`ast` columns count UTF-8 bytes)."""
        return self._node_offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        """Where a syntax node ends (just after its last character)."""
        return self._node_offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def name_end(self, node: ast.arg) -> int:
        """Just after a parameter's name (before its annotation or default)."""
        return self.start(node) + len(node.arg)

    def _node_offset(self, lineno: int, byte_column: int) -> int:
        return self.offset(lineno, len(self._lines[lineno - 1].encode("utf-8")[:byte_column].decode("utf-8")))

    def after_word(self, offset: int) -> bool:
        """Whether an ASCII letter or digit ends the text before ``offset`` (as every templated prompt's does)."""
        before = self.text[offset - 1 : offset]
        return before.isascii() and before.isalnum()

    def nodes(self, kind: type[Node]) -> Iterator[Node]:
        """The syntax nodes of one kind, in no particular order."""
        return (node for node in ast.walk(self.tree) if isinstance(node, kind))

    def functions(self) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
        """Every function definition, ``async`` or not."""
        return (node for node in ast.walk(self.tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def calls(node: ast.AST, *names: str) -> str | None:
    """The name ``node`` calls if it is a call of one of the plain ``names`` (``open(...)``, not ``os.open``)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
        return node.func.id
    return None


def constant(node: ast.AST | None, *values: object) -> ast.Constant | None:
    """``node`` if it is a literal equal to one of ``values`` and of the same type (``True`` is not ``1``)."""
    if isinstance(node, ast.Constant) and any(type(node.value) is type(v) and node.value == v for v in values):
        return node
    return None


def ends_of(code: Code, kind: type[Node], part: Callable[[Node], ast.AST | None], index: int) -> Iterator[Cut]:
    """A cut just after ``part(node)`` for each node of ``kind`` (none where it gives None), answered by the
    candidate ``index``."""
    for node in code.nodes(kind):
        found = part(node)
        if found is not None:
            yield code.end(found), index


def named(node: ast.AST | None) -> ast.Name | None:
    """``node`` if it is a plain name, else None."""
    return node if isinstance(node, ast.Name) else None


Finder = Callable[[Code], Iterable[Cut]]


@dataclass(frozen=True)
class Harvester:
    """How to find a task's natural instances; ``continued_by[i]`` is the pre-token the code must go on with for
    candidate ``i`` (the candidate itself unless the tokenizer splits a longer pre-token, as ` else`)."""

    find: Finder
    continued_by: tuple[str, str] | None = None


HARVESTERS: dict[str, Harvester] = {}


def harvests(name: str, continued_by: tuple[str, str] | None = None) -> Callable[[Finder], Finder]:
    """Decorator that registers a finder of cuts as the harvester of the task ``name``."""

    def register(find: Finder) -> Finder:
        if name in HARVESTERS:
            raise ValueError(f"task {name!r} already has a harvester ({HARVESTERS[name].find.__name__})")
        HARVESTERS[name] = Harvester(find, continued_by)
        return find

    return register
