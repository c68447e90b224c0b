"""Natural instances of the variable tasks: what a name was given decides how it is used or copied."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator

from circuitlab.tasks.harvest.scan import Code, Cut, harvests


@harvests("set_or_string")
def _set_or_string_use(code: Code) -> Iterator[Cut]:
    """A variable starting its line, last given ``set()`` or a string earlier in its scope, then used by
    ``.add`` or `` +=`` as that type allows."""
    for scope in [code.tree, *code.functions()]:
        given: dict[str, list[tuple[int, str]]] = {}  # name -> (line, kind of value) for each assignment
        uses: list[tuple[ast.Name, str]] = []
        for node in _walk_scope(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                given.setdefault(node.targets[0].id, []).append((node.lineno, _kind(node.value)))
            elif use := _use(node):
                uses.append(use)
        for name, kind in uses:
            earlier = [k for line, k in sorted(given.get(name.id, [])) if line < name.lineno]
            start = code.start(name)
            if earlier and earlier[-1] == kind and not code.text[code.line_start(name.lineno) : start].strip():
                yield start + len(name.id), ("set", "str").index(kind)


def _use(node: ast.AST) -> tuple[ast.Name, str] | None:
    """(the variable, "str") for ``name += ...``, (the variable, "set") for ``name.add(...)``, else None."""
    if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add) and isinstance(node.target, ast.Name):
        return node.target, "str"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add":
        return (node.func.value, "set") if isinstance(node.func.value, ast.Name) else None
    return None


def _walk_scope(scope: ast.AST) -> Iterable[ast.AST]:
    """Nodes of a module or function body, not descending into nested functions or classes."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _kind(value: ast.AST) -> str:
    """ "set" for ``set()``, "str" for a string or f-string, else "other"."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "set" and not value.args:
        return "set"
    if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        return "str"
    return "other"


_COPIED = ("name", "value")
"""The attributes ``class_init`` asks about (its candidates are these names)."""


@harvests("class_init")
def _attribute_copied_in_init(code: Code) -> Iterator[Cut]:
    """``self.name = name`` or ``self.value = value`` in an ``__init__``: after `` =`` comes the attribute's name."""
    for init in code.nodes(ast.FunctionDef):
        copies = [_copied_name(node) for node in ast.walk(init)] if init.name == "__init__" else []
        for copied in copies:
            if copied is not None and copied.id in _COPIED:
                yield code.start(copied) - 1, _COPIED.index(copied.id)


def _copied_name(node: ast.AST) -> ast.Name | None:
    """The right-hand ``x`` of a statement ``self.x = x``, or None for any other node."""
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.value, ast.Name)):
        return None
    target = node.targets[0]
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
        return node.value if target.attr == node.value.id else None
    return None
