"""Quotes and strings: close a string with the quote that opened it."""

from __future__ import annotations

import random

from circuitlab.tasks.codegen import FUNCTIONS, following, lead, literal, pick_name, sentence
from circuitlab.tasks.core import FramedPair, define_framed_task


def _quote_pair(rng: random.Random, indent: str, start: str) -> FramedPair:
    """``start`` then a string opened by ``'``, or the same string opened by ``"``; the same lines follow both."""
    text = sentence(rng)
    rest = following(rng, indent)
    return (f"{start}'{text}", rest), (f'{start}"{text}', rest)


@define_framed_task(
    "single_double_quote",
    ("'\n", '"\n'),
    "Close a string at the end of a line with the quote that opened it (the paper's string-closing task).",
)
def _single_double_quote(rng: random.Random, indent: str) -> FramedPair:
    var = pick_name(rng)
    return _quote_pair(rng, indent, lead(rng, indent, f"{var} += ", f"{var}.name = "))


@define_framed_task(
    "quote_in_call",
    ("')\n", '")\n'),
    "Close a string that is the last argument of a call, then the call, with the matching quote.",
)
def _quote_in_call(rng: random.Random, indent: str) -> FramedPair:
    call = rng.choice(("print", "log.info", "logger.debug", "raise ValueError", "out.write", "parts.append"))
    if rng.random() < 0.3:
        call = f"{pick_name(rng)} = {rng.choice(FUNCTIONS)}"
    before = "".join(f"{literal(rng)}, " for _ in range(rng.choice((0, 0, 1, 2))))
    return _quote_pair(rng, indent, f"{call}({before}")


@define_framed_task(
    "quote_in_list",
    ("',", '",'),
    "Close a string that is a middle element of a list with the quote that opened it (and its comma).",
)
def _quote_in_list(rng: random.Random, indent: str) -> FramedPair:
    start = lead(rng, indent)
    words = [sentence(rng, 2) for _ in range(rng.randint(2, 6))]
    cut = rng.randrange(len(words) - 1)
    prompts, rests = [], []
    for q in "'\"":
        quoted = [f"{q}{w}{q}" for w in words]
        prompts.append(f"{start}[{', '.join(quoted[:cut] + [q + words[cut]])}")
        rests.append(f" {', '.join(quoted[cut + 1 :])}]\n")
    return (prompts[0], rests[0]), (prompts[1], rests[1])


@define_framed_task(
    "fstring_brace",
    (" {", '")\n'),
    'After a word in a printed f-string comes a placeholder ` {` for a variable; in a plain string, the end `")`. '
    "Our tokenizer merges `{` into the punctuation before the name (and `{}` into a plain string's closing "
    "quote), so the paper's question, whether a variable name is inserted, is asked one token earlier.",
)
def _fstring_brace(rng: random.Random, indent: str) -> FramedPair:
    var = pick_name(rng)
    assigned = f"{var} = {literal(rng, {var})}\n{indent}"
    text = sentence(rng)
    rest = following(rng, indent)
    return (f'{assigned}print(f"{text}', f'{var}}}")\n{rest}'), (f'{assigned}print("{text}', rest)
