"""Definitions and files: signatures, lambdas, `with` statements and the mode a file is opened in."""

from __future__ import annotations

import random

from circuitlab.tasks.codegen import CLASSES, FUNCTIONS, INDENT, WORDS, literal, pick_name, statements
from circuitlab.tasks.core import FramedPair, Instance, define_framed_task, define_task


@define_task(
    "final_kwarg",
    ("=None", "):\n"),
    "After a parameter with a default the next parameter needs one too, so `=None` beats closing the signature "
    "with `):`; after a parameter without one, the signature may close.",
)
def _final_kwarg(rng: random.Random) -> tuple[Instance, Instance]:
    params = list(dict.fromkeys(pick_name(rng, {"self"}) for _ in range(rng.randint(2, 5))))
    while len(params) < 2:
        params.append(pick_name(rng, {"self", *params}))
    *plain, defaulted, last = params
    default = rng.choice(("None", "None", "True", "False", "0", "1", repr(rng.choice(WORDS))))
    if rng.random() < 0.3:
        head, indent, plain = f"class {rng.choice(CLASSES)}:\n", INDENT, ["self", *plain]
    else:
        head, indent = statements(rng, "", 0, 2), ""
    opening = f"{head}{indent}def {rng.choice(FUNCTIONS)}("
    body = statements(rng, indent + INDENT, 1, 2) + f"{indent}{INDENT}return {rng.choice(params)}\n"
    signatures = [", ".join([*plain, first, last]) for first in (f"{defaulted}={default}", defaulted)]
    return Instance(opening + signatures[0], f"):\n{body}"), Instance(opening + signatures[1], body)


@define_framed_task(
    "lambda_func",
    (":", "():\n"),
    "After `lambda name` comes `:`; after `def name`, the parameter list. Our tokenizer merges `(` with the name "
    "that follows it, so the paper's `(` becomes `():` (a function without parameters).",
)
def _lambda_func(rng: random.Random, indent: str) -> FramedPair:
    name = pick_name(rng)
    target = pick_name(rng, {name})
    use = rng.choice((f"{name}.size", f"{name} + 1", f"{name} * 2", f"{name}[0]", f"{name} is None", f"len({name})"))
    return (f"{target} = lambda {name}", f" {use}\n"), (f"def {name}", f"{indent}{INDENT}return {literal(rng)}\n")


FILE_NAMES = ("path", "file_name", "filename", "fname", "source", "target", "config_path", "name", "log_path")
HANDLES = ("f", "fh", "stream", "handle", "fp")


@define_framed_task(
    "with_as",
    (")", ")\n"),
    "`with open(name)` goes on with ` as`, an assignment `f = open(name)` ends its line. Our tokenizer merges `)` "
    "with a newline, so the decision is the token before the paper's ` as`: `)` or `)` + newline.",
)
def _with_as(rng: random.Random, indent: str) -> FramedPair:
    name, handle = rng.choice(FILE_NAMES), rng.choice(HANDLES)
    var = pick_name(rng, {name, handle})
    return (
        (f"with open({name}", f" as {handle}:\n{indent}{INDENT}{var} = {handle}.read()\n"),
        (f"{handle} = open({name}", f"{indent}{var} = {handle}.read()\n"),
    )


OPEN_FOR = (  # (read, write) file names that differ in the part that says which
    ("input_path", "output_path"),
    ("input_file", "output_file"),
    ("infile", "outfile"),
    ("in_file", "out_file"),
    ("src_path", "dst_path"),
    ("source_file", "target_file"),
    ("load_path", "save_path"),
    ('"input.txt"', '"output.txt"'),
    ('"data.csv"', '"results.csv"'),
    ('"config.json"', '"report.json"'),
)


@define_framed_task(
    "with_open",
    ("r", "w"),
    "The mode of `open(name, '` follows from the file's name: `r` for an input, `w` for an output. Our "
    "tokenizer splits `'r'` into the quote, `r` and the closing quote, so the candidates are the letters.",
)
def _with_open(rng: random.Random, indent: str) -> FramedPair:
    quote = rng.choice("'\"")
    handle = rng.choice(HANDLES)
    var = pick_name(rng, {handle})
    if rng.random() < 0.7:
        start, after, inner = "with open(", f") as {handle}:\n", indent + INDENT
    else:
        start, after, inner = f"{handle} = open(", ")\n", indent
    read, write = rng.choice(OPEN_FOR)
    return (
        (f"{start}{read}, {quote}", f"{quote}{after}{inner}{var} = {handle}.read()\n"),
        (f"{start}{write}, {quote}", f"{quote}{after}{inner}{handle}.write({var})\n"),
    )
