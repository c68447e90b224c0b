"""Python code for prompts and snippets: a vocabulary of names and words, and generators of ordinary lines.

The tasks build their prompts from these pieces and :mod:`circuitlab.synthetic` its filler code. Names end in
letters so that a prompt ending in one ends on a pre-token boundary.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

VARIABLES = (
    "x", "y", "n", "name", "value", "item", "count", "total", "result", "data", "key", "line", "text", "path",
    "node", "parts", "seen", "words", "buf", "out", "acc", "tokens", "chars", "label", "prefix", "suffix", "row",
    "col", "width", "height", "size", "index", "start", "end", "left", "right", "first", "last", "temp",
    "message", "status", "config", "options", "entry", "record", "field", "cache", "queue", "stack", "visited",
    "found", "names", "keys", "values", "lines", "items", "users", "tags", "pending", "output", "report",
    "level", "depth", "score", "limit", "offset", "step", "block", "chunk", "batch", "group", "target", "source",
    "params", "args", "kwargs", "response", "request", "query", "header", "body", "title", "url", "host", "port",
    "user_id", "file_name", "max_size", "min_value", "new_items", "old_name", "is_valid", "has_data",
)  # fmt: skip
FUNCTIONS = (
    "compute", "process", "load", "parse", "update", "render", "check", "build", "handle", "format_row", "merge",
    "split", "clean", "fetch", "store", "read", "write", "send", "apply", "collect", "validate", "convert",
    "transform", "normalize", "encode", "decode", "lookup", "register", "resolve", "run", "get_value", "make_key",
    "to_text", "from_dict", "count_words", "find", "filter_items", "sort_by", "group_by", "flatten",
)  # fmt: skip
CALLABLES = ("len", "str", "int", "float", "abs", "max", "min", "sum", "sorted", "list", "tuple", "repr", "hash")
WORDS = (
    "hello", "world", "error", "value", "name", "file", "data", "start", "stop", "done", "ready", "failed",
    "missing", "invalid", "unknown", "loading", "saving", "found", "empty", "total", "count", "result", "user",
    "path", "key", "item", "line", "text", "default", "config", "debug", "info", "warning", "success", "retry",
    "timeout", "server", "client", "request", "response", "token", "input", "output", "level", "mode", "state",
    "open", "close", "read", "write", "update", "delete", "create", "check", "test", "run", "main", "new", "old",
    "first", "last", "next", "before", "after", "left", "right", "red", "green", "blue", "alpha", "beta", "gamma",
    "apple", "banana", "cherry", "north", "south", "east", "west", "yes", "no", "on", "off", "utf", "ascii",
)  # fmt: skip
MODULES = (
    "os", "sys", "re", "json", "math", "random", "time", "datetime", "collections", "itertools", "functools",
    "typing", "pathlib", "logging", "subprocess", "argparse", "dataclasses", "string", "textwrap", "shutil",
    "tempfile", "hashlib", "base64", "struct", "copy", "pickle", "csv", "io", "glob", "heapq", "bisect",
    "operator", "contextlib", "inspect", "abc", "enum", "numbers", "decimal", "fractions", "statistics", "socket",
    "threading", "queue", "unittest", "warnings", "weakref", "numpy", "pandas", "torch", "requests", "os.path",
    "urllib.parse", "email.utils", "xml.etree", "http.client", "concurrent.futures", "importlib.util",
)  # fmt: skip
CLASSES = ("Parser", "Cache", "Node", "Reader", "Builder", "Config", "Handler", "Queue", "Model")
INDENT = "    "


def pick_name(rng: random.Random, avoid: Iterable[str] = ()) -> str:
    """A variable name not in ``avoid``."""
    avoid = set(avoid)
    while True:
        name = rng.choice(VARIABLES)
        if name not in avoid:
            return name


def sentence(rng: random.Random, max_words: int = 5) -> str:
    """String-literal content: words (sometimes with digits or punctuation inside), ending in a letter."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, max_words))]
    for i in range(len(words) - 1):
        roll = rng.random()
        if roll < 0.1:
            words[i] += rng.choice((",", ":", "!", "."))
        elif roll < 0.15:
            words[i] = str(rng.randint(0, 99))
    if rng.random() < 0.15:
        words[0] = words[0].capitalize()
    return " ".join(words)


def atom(rng: random.Random, avoid: Iterable[str] = (), names_ok: bool = True) -> str:
    """A short expression that ends in a letter or digit: an int or a name."""
    if names_ok and rng.random() < 0.4:
        return pick_name(rng, avoid)
    return str(rng.choice((rng.randint(0, 9), rng.randint(0, 99), rng.randint(0, 999), -rng.randint(1, 9))))


def literal(rng: random.Random, avoid: Iterable[str] = ()) -> str:
    """A short expression of any common kind (for list elements, arguments, right-hand sides)."""
    roll = rng.random()
    if roll < 0.55:
        return atom(rng, avoid)
    if roll < 0.75:
        quote = rng.choice("'\"")
        return f"{quote}{sentence(rng, 2)}{quote}"
    if roll < 0.9:
        return f"{rng.choice(CALLABLES)}({atom(rng, avoid)})"
    return f"{pick_name(rng, avoid)}.{rng.choice(('size', 'name', 'value', 'count', 'data'))}"


def statement(rng: random.Random, indent: str, avoid: Iterable[str] = ()) -> str:
    """One unremarkable line of code (with its newline, sometimes after a comment line) that does not mention
    the names in ``avoid``."""
    avoid = set(avoid)
    target = pick_name(rng, avoid)
    other = pick_name(rng, avoid | {target})
    roll = rng.random()
    if roll < 0.25:
        code = f"{target} = {literal(rng, avoid)}"
    elif roll < 0.4:
        code = f"{target} = {other} {rng.choice('+-*')} {rng.randint(1, 99)}"
    elif roll < 0.55:
        args = ", ".join(literal(rng, avoid) for _ in range(rng.randint(0, 3)))
        code = f"{target} = {rng.choice(FUNCTIONS)}({args})"
    elif roll < 0.65:
        code = f"print({literal(rng, avoid)})"
    elif roll < 0.75:
        code = f"{target} = [{', '.join(atom(rng, avoid) for _ in range(rng.randint(0, 4)))}]"
    elif roll < 0.82:
        return f"{indent}# {sentence(rng, 6)}\n{statement(rng, indent, avoid)}"
    elif roll < 0.88:
        code = f"{rng.choice(FUNCTIONS)}({other})"
    elif roll < 0.94:
        key = rng.choice(WORDS)
        code = rng.choice((f'{target} = {other}["{key}"]', f'{other}["{key}"] = {literal(rng, avoid)}'))
    else:
        code = f"{target} = {{{literal(rng, avoid)}: {atom(rng, avoid)}}}"
    return f"{indent}{code}\n"


def statements(rng: random.Random, indent: str, low: int, high: int, avoid: Iterable[str] = ()) -> str:
    return "".join(statement(rng, indent, avoid) for _ in range(rng.randint(low, high)))


def frame(rng: random.Random, avoid: Iterable[str] = ()) -> tuple[str, str]:
    """Code that opens a scope for a prompt, and the indentation of the prompt's lines.

    Module level, a function body, or a method body, each with a few lines before.
    """
    avoid = set(avoid)
    roll = rng.random()
    if roll < 0.3:
        return statements(rng, "", 0, 2, avoid), ""
    params = ", ".join(dict.fromkeys(pick_name(rng, avoid) for _ in range(rng.randint(0, 3))))
    if roll < 0.8:
        header = f"def {rng.choice(FUNCTIONS)}({params}):\n"
        return header + statements(rng, INDENT, 0, 2, avoid), INDENT
    cls = rng.choice(CLASSES)
    sep = ", " if params else ""
    header = f"class {cls}:\n{INDENT}def {rng.choice(FUNCTIONS)}(self{sep}{params}):\n"
    return header + statements(rng, INDENT * 2, 0, 2, avoid | {"self"}), INDENT * 2


def following(rng: random.Random, indent: str, avoid: Iterable[str] = ()) -> str:
    """A few lines after a task's answer, so generated snippets continue like real code."""
    return statements(rng, indent, 0, 2, avoid)


def if_before_elif(rng: random.Random, indent: str) -> str:
    """An ``if`` line and one line of its body, from after ``indent`` to where an ``elif`` at ``indent`` starts."""
    return f"if {pick_name(rng)}:\n{statement(rng, indent + INDENT)}{indent}"


def lead(rng: random.Random, indent: str, *extra: str) -> str:
    """The start of a line that an expression completes: an assignment, ``return`` inside a function, or
    one of ``extra``."""
    var = pick_name(rng)
    choices = (f"{var} = ", f"{var} = ", f"self.{var} = ", *extra) + (("return ",) if indent else ())
    return rng.choice(choices)
