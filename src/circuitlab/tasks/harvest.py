"""Natural instances of the case-study tasks in real code: harvested from the corpus snapshot."""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Callable, Iterable

from circuitlab.snapshot import iter_corpus_files
from circuitlab.tasks.core import Datapoint


def harvest(name: str, split: str = "val", limit: int | None = None) -> list[Datapoint]:
    """Natural instances of a case-study task in the real-code corpus split ("train" or "val").

    The prompt is all the file's code before the answer (``make_batch(..., n_ctx=...)`` keeps its end).
    """
    found: list[Datapoint] = []
    for _, source in iter_corpus_files(split):
        found.extend(harvest_source(name, source))
        if limit is not None and len(found) >= limit:
            return found[:limit]
    return found


def harvest_source(name: str, source: str) -> list[Datapoint]:
    """Natural instances of a case-study task in one file's source code (see :func:`harvest`)."""
    if name not in _HARVESTERS:
        raise ValueError(f"harvesting exists for {sorted(_HARVESTERS)}, not for {name!r}")
    try:
        return _HARVESTERS[name](source)
    except (SyntaxError, tokenize.TokenError, ValueError):
        return []


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(source).readline))


def _line_offsets(source: str) -> list[int]:
    """Character offset of each line start; index 0 is a dummy so that ``offsets[lineno]`` works."""
    offsets = [0, 0]
    for line in source.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _ends_one_line(source: str, offset: int, closer: str) -> bool:
    """Whether ``closer`` then exactly one newline (not a blank line) follows ``offset``."""
    after = offset + len(closer)
    return source.startswith(closer + "\n", offset) and not source.startswith("\n", after + 1)


def _harvest_quotes(source: str) -> list[Datapoint]:
    offsets = _line_offsets(source)
    found = []
    string_end = {tokenize.STRING} | ({tokenize.FSTRING_END} if hasattr(tokenize, "FSTRING_END") else set())
    for tok in _tokens(source):
        if tok.type not in string_end or tok.start[0] != tok.end[0]:
            continue
        quote = tok.string[-1]
        if tok.string.endswith(quote * 3) or len(tok.string) < 2:
            continue
        close = offsets[tok.end[0]] + tok.end[1] - 1
        if source[close - 1].isalnum() and source[close - 1].isascii() and _ends_one_line(source, close, quote):
            other = "'" if quote == '"' else '"'
            found.append(Datapoint(source[:close], quote + "\n", other + "\n"))
    return found


def _harvest_brackets(source: str) -> list[Datapoint]:
    offsets = _line_offsets(source)
    found = []
    stack: list[bool] = []  # per open bracket: is it a list literal?
    previous = None
    for tok in _tokens(source):
        if tok.type == tokenize.OP and tok.string in "([{":
            subscript = previous is not None and (
                (previous.type == tokenize.NAME and previous.string not in _KEYWORDS)
                or previous.type == tokenize.STRING
                or previous.string in (")", "]")
            )
            stack.append(tok.string == "[" and not subscript)
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth = len(stack)
            start = offsets[tok.start[0]] + tok.start[1]
            if depth in (1, 2) and all(stack) and source[start - 1].isalnum() and source[start - 1].isascii():
                closer = "]" * depth
                if _ends_one_line(source, start, closer):
                    other = "]" if depth == 2 else "]]"
                    found.append(Datapoint(source[:start], closer + "\n", other + "\n"))
            if stack:
                stack.pop()
        previous = tok if tok.type not in (tokenize.NL, tokenize.COMMENT) else previous
    return found


_KEYWORDS = frozenset(("in", "return", "yield", "and", "or", "not", "if", "else", "is", "lambda", "await", "assert"))


def _harvest_set_or_string(source: str) -> list[Datapoint]:
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    offsets = _line_offsets(source)
    found = []
    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes:
        kinds: dict[str, list[tuple[int, str]]] = {}
        uses: list[tuple[ast.Name, str, str]] = []
        for node in _walk_scope(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                kinds.setdefault(node.targets[0].id, []).append((node.lineno, _init_kind(node.value)))
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and isinstance(node.op, ast.Add):
                uses.append((node.target, node.target.id, "str"))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add"
                and isinstance(node.func.value, ast.Name)
            ):
                uses.append((node.func.value, node.func.value.id, "set"))
        for name_node, var, kind in sorted(uses, key=lambda use: (use[0].lineno, use[0].col_offset)):
            earlier = [k for line, k in sorted(kinds.get(var, [])) if line < name_node.lineno]
            if not earlier or earlier[-1] != kind or not var[-1].isalnum():
                continue
            line = lines[name_node.lineno - 1]
            column = len(line.encode("utf-8")[: name_node.col_offset].decode("utf-8"))
            if line[:column].strip():
                continue  # the variable must start its line
            start = offsets[name_node.lineno] + column + len(var)
            target, alternative = (".add", " +=") if kind == "set" else (" +=", ".add")
            if source.startswith(target + ("(" if kind == "set" else " "), start):
                found.append(Datapoint(source[:start], target, alternative))
    return found


def _walk_scope(scope: ast.AST) -> Iterable[ast.AST]:
    """Nodes of a module or function body, not descending into nested functions or classes."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _init_kind(value: ast.AST) -> str:
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "set" and not value.args:
        return "set"
    if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        return "str"
    return "other"


_HARVESTERS: dict[str, Callable[[str], list[Datapoint]]] = {
    "single_double_quote": _harvest_quotes,
    "bracket_counting": _harvest_brackets,
    "set_or_string": _harvest_set_or_string,
}
