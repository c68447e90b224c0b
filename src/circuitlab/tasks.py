"""Binary next-token tasks on Python code: contrast pairs, disjoint splits, the paper's task loss, harvesting.

A task asks one question whose answer is one of two tokens, decided by one syntactic or semantic fact about
earlier code (which quote opened the string, how deep the list is, what type the variable was given). Each
task generates *contrast pairs*: a prompt whose next token is ``candidates[0]`` and a matched prompt, differing
only in that fact, whose next token is ``candidates[1]``.

Splits are disjoint by construction: the sha1 of a prompt's text alone puts it in "train" or "test"
(:func:`prompt_split`), and a pair belongs to a split only when both its prompts do. The synthetic corpus
(:mod:`circuitlab.synthetic`) draws its task instances through the same function, so no test prompt is ever
training text.
"""

from __future__ import annotations

import ast
import hashlib
import io
import random
import tokenize
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from torch import Tensor

SPLITS = ("train", "test")
TEST_PROMPT_FRACTION = 1 / 3
"""Fraction of prompts hashed to "test". A pair needs both prompts in one split, so about 1/5 of pairs are test."""

MAX_DRAWS_PER_PAIR = 200


# --------------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Datapoint:
    """One task prompt: ``target`` is the correct next token's string, ``alternative`` the wrong candidate's."""

    prompt: str
    target: str
    alternative: str


@dataclass(frozen=True)
class Instance:
    """A generated prompt with the code that follows its answer: the snippet is ``prompt + answer + rest``."""

    prompt: str
    rest: str = ""


Sampler = Callable[[random.Random], tuple[Instance, Instance]]
"""Draws one contrast pair: (instance answered by candidates[0], matched instance answered by candidates[1])."""


@dataclass
class TaskBatch:
    """Tokenised prompts ready for a forward pass; logits are read at ``last`` (right padding is then harmless)."""

    tokens: Tensor  # [n, max_len] int64, right-padded with the pad id
    last: Tensor  # [n] index of each prompt's last real token
    target: Tensor  # [n] token id of the correct candidate
    alternative: Tensor  # [n] token id of the wrong candidate
    datapoints: list[Datapoint] = field(default_factory=list)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(
            self.tokens.to(device),
            self.last.to(device),
            self.target.to(device),
            self.alternative.to(device),
            self.datapoints,
        )


# ------------------------------------------------------------------------------------------------ splits


def prompt_split(prompt: str) -> str:
    """The split ("train" or "test") of a prompt, from the sha1 of its text alone: every task and the synthetic
    corpus agree on it."""
    digest = int.from_bytes(hashlib.sha1(prompt.encode("utf-8")).digest()[:8], "big")
    return "test" if digest < TEST_PROMPT_FRACTION * 2**64 else "train"


def pair_split(pair: tuple[Instance, Instance]) -> str | None:
    """The split both prompts of a pair fall in, or None when they disagree (such pairs are never used)."""
    first, second = (prompt_split(instance.prompt) for instance in pair)
    return first if first == second else None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# -------------------------------------------------------------------------------------------------- Task


class Task:
    """A binary next-token task: a name, two candidate tokens and a sampler of contrast pairs."""

    def __init__(self, name: str, description: str, candidates: tuple[str, str], sampler: Sampler):
        if len(candidates) != 2 or not all(isinstance(c, str) and c for c in candidates):
            raise ValueError(f"task {name!r}: candidates must be two non-empty strings, got {candidates!r}")
        if candidates[0] == candidates[1]:
            raise ValueError(f"task {name!r}: the two candidates are the same string {candidates[0]!r}")
        self.name = name
        self.description = description
        self.candidates = tuple(candidates)
        self.sampler = sampler

    def __repr__(self) -> str:
        return f"Task({self.name!r}, candidates={self.candidates!r})"

    def draw(self, rng: random.Random, split: str) -> tuple[Instance, Instance]:
        """One contrast pair from ``split``, drawn by rejection on :func:`pair_split`."""
        _check_split(split)
        for _ in range(MAX_DRAWS_PER_PAIR):
            pair = self.sampler(rng)
            if pair_split(pair) == split:
                return pair
        raise RuntimeError(f"task {self.name!r}: no {split} pair in {MAX_DRAWS_PER_PAIR} draws; is its sampler varied?")

    def pairs(self, split: str, n: int, seed: int = 0) -> list[tuple[Datapoint, Datapoint]]:
        """``n`` contrast pairs from ``split`` (all ``2 n`` prompts distinct); the first prompt of each pair is
        answered by ``candidates[0]``, the second by ``candidates[1]``."""
        rng = random.Random(f"{self.name}/{split}/{seed}")
        seen: set[str] = set()
        result: list[tuple[Datapoint, Datapoint]] = []
        for _ in range(n * 50 + 1000):
            if len(result) == n:
                break
            first, second = self.draw(rng, split)
            if first.prompt in seen or second.prompt in seen:
                continue
            seen.update((first.prompt, second.prompt))
            a, b = self.candidates
            result.append((Datapoint(first.prompt, a, b), Datapoint(second.prompt, b, a)))
        if len(result) < n:
            raise ValueError(f"task {self.name!r} gave only {len(result)} distinct {split} pairs, {n} were asked")
        return result

    def datapoints(self, split: str, n: int, seed: int = 0) -> list[Datapoint]:
        """The ``2 n`` prompts of :meth:`pairs`, each pair's two prompts next to each other."""
        return [point for pair in self.pairs(split, n, seed) for point in pair]

    def candidate_ids(self, tokenizer: Tokenizer) -> tuple[int, int]:
        """The candidates' token ids; ValueError if either is not a single token under ``tokenizer``."""
        owner = f"task {self.name!r}"
        return _single_token_id(tokenizer, self.candidates[0], owner), _single_token_id(
            tokenizer, self.candidates[1], owner
        )

    def batch(
        self,
        tokenizer: Tokenizer,
        split: str,
        n: int,
        seed: int = 0,
        n_ctx: int | None = None,
        truncate: bool = True,
        prepend_bos: bool = True,
    ) -> TaskBatch:
        """``n`` pairs as a :class:`TaskBatch` of ``2 n`` rows (pair members adjacent); see :func:`make_batch`."""
        self.candidate_ids(tokenizer)
        points = self.datapoints(split, n, seed)
        return make_batch(tokenizer, points, n_ctx=n_ctx, truncate=truncate, prepend_bos=prepend_bos)


def _single_token_id(tokenizer: Tokenizer, text: str, owner: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if len(ids) != 1:
        pieces = [tokenizer.id_to_token(i) for i in ids]
        raise ValueError(
            f"{owner}: candidate {text!r} is not a single token under this tokenizer; it tokenises "
            f"as {pieces!r}. Rebuild the tokenizer on text where {text!r} is frequent (python -m "
            f"circuitlab.tokenizer), or change the task's candidates."
        )
    return ids[0]


def make_batch(
    tokenizer: Tokenizer,
    datapoints: list[Datapoint],
    n_ctx: int | None = None,
    truncate: bool = True,
    prepend_bos: bool = True,
) -> TaskBatch:
    """Tokenise datapoints (BOS ``<|endoftext|>`` first), right-pad with the same id, find each last position.

    With ``n_ctx`` a longer prompt keeps its last ``n_ctx`` tokens, or, with ``truncate=False``, is an error.
    Every prompt must end on a token boundary before its target, which is checked:
    ``tokens(prompt + target) == tokens(prompt) + [target]``.
    """
    if not datapoints:
        raise ValueError("make_batch needs at least one datapoint")
    pad_id = tokenizer.token_to_id("<|endoftext|>")
    if pad_id is None:
        raise ValueError("the tokenizer has no <|endoftext|> token, which task batches use as BOS and padding")
    prompts = tokenizer.encode_batch([d.prompt for d in datapoints], add_special_tokens=False)
    completed = tokenizer.encode_batch([d.prompt + d.target for d in datapoints], add_special_tokens=False)
    rows, targets, alternatives = [], [], []
    for point, prompt, full in zip(datapoints, prompts, completed, strict=True):
        target = _single_token_id(tokenizer, point.target, "datapoint")
        alternative = _single_token_id(tokenizer, point.alternative, "datapoint")
        if full.ids != prompt.ids + [target]:
            raise ValueError(
                f"prompt {point.prompt[-40:]!r} does not end on a token boundary before {point.target!r}: "
                f"prompt + target ends in the tokens {full.tokens[-3:]!r}. End the prompt where a new "
                "pre-token starts (after letters or digits for punctuation candidates)."
            )
        row = ([pad_id] if prepend_bos else []) + prompt.ids
        if n_ctx is not None and len(row) > n_ctx:
            if not truncate:
                raise ValueError(
                    f"a prompt is {len(row)} tokens long, more than n_ctx={n_ctx}; pass truncate=True to keep "
                    "the last n_ctx tokens of each prompt"
                )
            row = row[-n_ctx:]
        rows.append(row)
        targets.append(target)
        alternatives.append(alternative)
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return TaskBatch(
        tokens=tokens,
        last=torch.tensor([len(row) - 1 for row in rows], dtype=torch.long),
        target=torch.tensor(targets, dtype=torch.long),
        alternative=torch.tensor(alternatives, dtype=torch.long),
        datapoints=list(datapoints),
    )


# ---------------------------------------------------------------------------------------- loss, accuracy


def _candidate_logits(logits: Tensor, batch: TaskBatch) -> tuple[Tensor, Tensor]:
    if logits.ndim != 3 or logits.shape[0] != len(batch):
        raise ValueError(f"logits must be [n={len(batch)}, pos, vocab], got {tuple(logits.shape)}")
    if logits.shape[1] <= int(batch.last.max()):
        raise ValueError(
            f"logits have {logits.shape[1]} positions but the batch's last index is {int(batch.last.max())}"
        )
    rows = torch.arange(len(batch), device=logits.device)
    at_last = logits[rows, batch.last.to(logits.device)]
    return (
        at_last.gather(1, batch.target.to(logits.device)[:, None])[:, 0],
        at_last.gather(1, batch.alternative.to(logits.device)[:, None])[:, 0],
    )


def task_loss(logits: Tensor, batch: TaskBatch, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy over the two candidate logits at each prompt's last position.

    Per prompt: ``-log softmax([target, alternative])[0]``. The paper's loss sums a pair's two prompts, i.e. it
    is twice the "mean" here. ``reduction`` is "mean", "sum" or "none" (per prompt, shape [n]).
    """
    target, alternative = _candidate_logits(logits, batch)
    per_prompt = torch.nn.functional.softplus(alternative - target)
    if reduction == "none":
        return per_prompt
    if reduction == "sum":
        return per_prompt.sum()
    if reduction == "mean":
        return per_prompt.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def task_accuracy(logits: Tensor, batch: TaskBatch) -> float:
    """Fraction of prompts whose target logit exceeds the alternative's at the last position."""
    target, alternative = _candidate_logits(logits, batch)
    return (target > alternative).float().mean().item()


# ---------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Task] = {}


def register(task: Task, overwrite: bool = False) -> Task:
    """Add a task to the registry (ValueError if the name is taken, unless ``overwrite``)."""
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"a task named {task.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    """The registered task called ``name``; KeyError listing the available names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no task named {name!r}; available tasks: {', '.join(names())}") from None


def names() -> list[str]:
    """Names of all registered tasks, in registration order (grouped by family: strings, brackets, types, syntax)."""
    return list(_REGISTRY)


def _task(name: str, candidates: tuple[str, str], description: str) -> Callable[[Sampler], Sampler]:
    def decorate(sampler: Sampler) -> Sampler:
        register(Task(name, description, candidates, sampler))
        return sampler

    return decorate


# ------------------------------------------------------------------------------ code vocabulary for prompts
# Names end in letters so that a prompt ending in one ends on a pre-token boundary.

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
    cls = rng.choice(("Parser", "Cache", "Node", "Reader", "Builder", "Config", "Handler", "Queue", "Model"))
    sep = ", " if params else ""
    header = f"class {cls}:\n{INDENT}def {rng.choice(FUNCTIONS)}(self{sep}{params}):\n"
    return header + statements(rng, INDENT * 2, 0, 2, avoid | {"self"}), INDENT * 2


def following(rng: random.Random, indent: str, avoid: Iterable[str] = ()) -> str:
    """A few lines after a task's answer, so generated snippets continue like real code."""
    return statements(rng, indent, 0, 2, avoid)


def lead(rng: random.Random, indent: str, *extra: str) -> str:
    """The start of a line that an expression completes: an assignment, ``return`` inside a function, or
    one of ``extra``."""
    var = pick_name(rng)
    choices = (f"{var} = ", f"{var} = ", f"self.{var} = ", *extra) + (("return ",) if indent else ())
    return rng.choice(choices)


def _same_rest(rest: str, *prompts: str) -> tuple[Instance, ...]:
    return tuple(Instance(prompt, rest) for prompt in prompts)


# ----------------------------------------------------------------------------------- quotes and strings


@_task(
    "single_double_quote",
    ("'\n", '"\n'),
    "Close a string at the end of a line with the quote that opened it (the paper's string-closing task).",
)
def _single_double_quote(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    var = pick_name(rng)
    start = lead(rng, indent, f"{var} += ", f"{var}.name = ")
    text = sentence(rng)
    rest = following(rng, indent)
    return _same_rest(rest, *(f"{head}{indent}{start}{q}{text}" for q in "'\""))


@_task(
    "quote_in_call",
    ("')\n", '")\n'),
    "Close a string that is the last argument of a call, then the call, with the matching quote.",
)
def _quote_in_call(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    call = rng.choice(("print", "log.info", "logger.debug", "raise ValueError", "out.write", "parts.append"))
    if rng.random() < 0.3:
        call = f"{pick_name(rng)} = {rng.choice(FUNCTIONS)}"
    before = "".join(f"{literal(rng)}, " for _ in range(rng.choice((0, 0, 1, 2))))
    text = sentence(rng)
    rest = following(rng, indent)
    return _same_rest(rest, *(f"{head}{indent}{call}({before}{q}{text}" for q in "'\""))


@_task(
    "quote_in_list",
    ("',", '",'),
    "Close a string that is a middle element of a list with the quote that opened it (and its comma).",
)
def _quote_in_list(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    start = lead(rng, indent)
    words = [sentence(rng, 2) for _ in range(rng.randint(2, 6))]
    cut = rng.randrange(len(words) - 1)
    prompts, rests = [], []
    for q in "'\"":
        quoted = [f"{q}{w}{q}" for w in words]
        prompts.append(f"{head}{indent}{start}[{', '.join(quoted[:cut] + [q + words[cut]])}")
        rests.append(f" {', '.join(quoted[cut + 1 :])}]\n")
    return Instance(prompts[0], rests[0]), Instance(prompts[1], rests[1])


# ------------------------------------------------------------------------------------------------ brackets


def nested(rng: random.Random, depth: int, opener: Callable[[int], str]) -> tuple[str, str]:
    """An unfinished nested literal, open to ``depth`` >= 2, and the same one with its innermost opener removed.

    ``opener(level)`` gives the opening text at each level (``"["``, ``"f("``, ...). Completed siblings come
    before each deeper opener, so the depth is not simply the number of brackets at the start.
    """
    parts = []
    for level in range(1, depth + 1):
        parts.append(opener(level))
        if level < depth:
            for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
                inner = ", ".join(atom(rng) for _ in range(rng.randint(1, 4)))
                parts.append(f"{opener(level + 1)}{inner}{')' if opener(level + 1).endswith('(') else ']'}, ")
    elements = _elements(rng, rng.randint(1, 6))
    return "".join(parts) + elements, "".join(parts[:-1]) + elements


def _elements(rng: random.Random, n: int) -> str:
    """``n`` comma-separated atoms. A lone element is a number: a name right after a bracket would merge with it
    into one pre-token (``[name``), so the last token alone would give the bracket away."""
    return ", ".join(atom(rng, names_ok=n > 1) for _ in range(n))


def _bracket_depth_pair(rng: random.Random, depth: int) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    start = lead(rng, indent)
    deep, shallow = nested(rng, depth, lambda level: "[")
    rest = following(rng, indent)
    return Instance(f"{head}{indent}{start}{deep}", rest), Instance(f"{head}{indent}{start}{shallow}", rest)


@_task(
    "bracket_counting",
    ("]]\n", "]\n"),
    "Close a list literal that ends a line: nested at depth 2 needs `]]`, depth 1 needs `]` (the paper's task).",
)
def _bracket_counting(rng: random.Random) -> tuple[Instance, Instance]:
    return _bracket_depth_pair(rng, 2)


@_task(
    "paren_counting",
    ("))\n", ")\n"),
    "Close nested calls at the end of a line: a call inside a call needs `))`, a single call `)`.",
)
def _paren_counting(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    start = lead(rng, indent, "")
    outer, inner = rng.choice(FUNCTIONS + CALLABLES), rng.choice(FUNCTIONS + CALLABLES)
    deep, shallow = nested(rng, 2, lambda level: f"{outer}(" if level == 1 else f"{inner}(")
    rest = following(rng, indent)
    return Instance(f"{head}{indent}{start}{deep}", rest), Instance(f"{head}{indent}{start}{shallow}", rest)


def _opener_pair(rng: random.Random, openers: tuple[str, str]) -> tuple[Instance, Instance]:
    """The same elements opened by two different brackets (completed inner groups make it less trivial)."""
    head, indent = frame(rng)
    start = lead(rng, indent)
    items = []
    for _ in range(rng.randint(0, 5)):
        inner = ", ".join(atom(rng) for _ in range(rng.randint(1, 3)))
        items.append(rng.choice((atom(rng), literal(rng), f"[{inner}]", f"({inner})")))
    items.append(atom(rng, names_ok=bool(items)))
    body = ", ".join(items)
    rest = following(rng, indent)
    return _same_rest(rest, *(f"{head}{indent}{start}{opener}{body}" for opener in openers))


@_task(
    "close_tuple_or_list",
    (")\n", "]\n"),
    "Close a literal at the end of a line with the bracket that opened it: a tuple or call `)`, a list `]`.",
)
def _close_tuple_or_list(rng: random.Random) -> tuple[Instance, Instance]:
    return _opener_pair(rng, (rng.choice(("(", "(", f"{rng.choice(FUNCTIONS)}(")), "["))


@_task(
    "close_set_or_list",
    ("}\n", "]\n"),
    "Close a literal at the end of a line with the bracket that opened it: a set `}`, a list `]`.",
)
def _close_set_or_list(rng: random.Random) -> tuple[Instance, Instance]:
    return _opener_pair(rng, ("{", "["))


@_task(
    "paren_colon",
    ("):\n", ")\n"),
    "Close a call that ends a line: in an `if`/`while`/`for` header it needs `):`, in a statement `)`.",
)
def _paren_colon(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    var = pick_name(rng)
    func = rng.choice(FUNCTIONS + CALLABLES)
    header = rng.choice(("if ", "if not ", "while ", f"for {var} in ", "elif "))
    if header == "elif ":
        head += f"{indent}if {pick_name(rng)}:\n{statement(rng, indent + INDENT)}"
    statement_lead = lead(rng, indent, "", f"{var} = not ")
    args = ", ".join(literal(rng, {var}) for _ in range(rng.randint(0, 3)))
    args = f"{args}, {atom(rng, {var})}" if args else atom(rng, {var})
    call = f"{func}({args}"
    return (
        Instance(f"{head}{indent}{header}{call}", statement(rng, indent + INDENT)),
        Instance(f"{head}{indent}{statement_lead}{call}", following(rng, indent)),
    )


@_task(
    "condition_colon",
    (":\n", "\n"),
    "A condition that ends a line: after `if`/`while`/`elif` it needs `:`, as a right-hand side a plain newline.",
)
def _condition_colon(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    var, other = pick_name(rng), pick_name(rng)
    condition = rng.choice(
        (other, f"not {other}", f"{var} > {other}", f"{var} in {other}", f"{var} is not {other}", f"{var} == {other}")
    )
    header = rng.choice(("if ", "if ", "while ", "elif "))
    if header == "elif ":
        head += f"{indent}if {pick_name(rng)}:\n{statement(rng, indent + INDENT)}"
    flag = rng.choice(("ok", "done", "ready", "result", "valid", "is_new", "matched", "flag"))
    return (
        Instance(f"{head}{indent}{header}{condition}", statement(rng, indent + INDENT)),
        Instance(f"{head}{indent}{flag} = {condition}", following(rng, indent)),
    )


@_task(
    "dict_or_set_key",
    ('":', '",'),
    'After a string key in a `{...}` literal: a dict (earlier entries have colons) needs `":`, a set `",`.',
)
def _dict_or_set_key(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    start = lead(rng, indent)
    keys = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
    entries_dict = ", ".join(f'"{k}": {literal(rng)}' for k in keys[:-1])
    entries_set = ", ".join(f'"{k}"' for k in keys[:-1])
    return (
        Instance(f'{head}{indent}{start}{{{entries_dict}, "{keys[-1]}', f" {literal(rng)}}}\n"),
        Instance(f'{head}{indent}{start}{{{entries_set}, "{keys[-1]}', f' "{rng.choice(WORDS)}"}}\n'),
    )


# -------------------------------------------------------------------------------- variables and their types


def _typed_variable_pair(
    rng: random.Random, inits: tuple[str, str], uses: tuple[str, str], var: str | None = None
) -> tuple[Instance, Instance]:
    """``var = inits[i]``, a few unrelated lines, then ``var`` at the start of a line, to be continued by
    ``uses[i]``, the use that fits its type (the paper's set_or_string shape: a two-hop name -> type lookup)."""
    head, indent = frame(rng)
    var = var or pick_name(rng)
    between = statements(rng, indent, 1, 4, {var})
    use_indent = indent
    if rng.random() < 0.4:
        loop_var = pick_name(rng, {var})
        between += f"{indent}for {loop_var} in {pick_name(rng, {var, loop_var})}:\n"
        use_indent = indent + INDENT
        between += statements(rng, use_indent, 0, 1, {var})
    value = literal(rng, {var})
    key = rng.choice(WORDS)
    tail = f"{indent}return {var}\n" if indent and rng.random() < 0.5 else ""
    first, second = (
        Instance(f"{head}{indent}{var} = {init}\n{between}{use_indent}{var}", _rest_of_use(use, value, key) + tail)
        for init, use in zip(inits, uses, strict=True)
    )
    return first, second


def _rest_of_use(use: str, value: str, key: str) -> str:
    """What follows the candidate token ``use`` on its line: ``.add(value)``, `` += value``, ``["key"] = value``."""
    if use.startswith("."):
        return f"({value})\n"
    if use == '["':
        return f'{key}"] = {value}\n'
    return f" {value}\n"


def _string_init(rng: random.Random) -> str:
    return rng.choice(('""', '""', '""', "''", f'"{rng.choice(WORDS)}"'))


@_task(
    "call_arity",
    (")\n", ","),
    "Call a function defined earlier: after as many arguments as it has parameters `)`, otherwise `,`.",
)
def _call_arity(rng: random.Random) -> tuple[Instance, Instance]:
    func = rng.choice(FUNCTIONS)
    n_args = rng.randint(1, 3)
    params: list[str] = []
    while len(params) <= n_args:
        params.append(pick_name(rng, params))
    middle = statements(rng, "", 0, 3, {func})
    var = pick_name(rng)
    args = ", ".join(atom(rng) for _ in range(n_args))
    call = f"{middle}{var} = {func}({args}"
    extra = atom(rng)
    prompts = [
        f"def {func}({', '.join(params[:k])}):\n{INDENT}return {' + '.join(params[:k])}\n\n{call}"
        for k in (n_args, n_args + 1)
    ]
    return Instance(prompts[0], following(rng, "")), Instance(prompts[1], f" {extra})\n")


@_task(
    "set_or_string",
    (".add", " +="),
    'After `x = set()` or `x = ""` and a few lines, continue `x` with `.add` or ` +=` (the paper\'s task).',
)
def _set_or_string(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("set()", _string_init(rng)), (".add", " +="))


@_task(
    "set_or_string_fixedvarname",
    (".add", " +="),
    "set_or_string with the variable always called `x`, so only its initialisation can decide.",
)
def _set_or_string_fixedvarname(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("set()", _string_init(rng)), (".add", " +="), var="x")


@_task(
    "list_or_set",
    (".append", ".add"),
    "After `x = []` or `x = set()` and a few lines, continue `x` with `.append` or `.add`.",
)
def _list_or_set(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, (rng.choice(("[]", "[]", "list()")), "set()"), (".append", ".add"))


@_task(
    "int_or_list",
    (" +=", ".append"),
    "After `x = 0` or `x = []` and a few lines, continue `x` with ` +=` or `.append`.",
)
def _int_or_list(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, (rng.choice(("0", "0", "1", "0.0")), "[]"), (" +=", ".append"))


@_task(
    "list_or_dict",
    (".append", '["'),
    'After `x = []` or `x = {}` and a few lines, continue `x` with `.append` or a string subscript `["`.',
)
def _list_or_dict(rng: random.Random) -> tuple[Instance, Instance]:
    return _typed_variable_pair(rng, ("[]", rng.choice(("{}", "{}", "dict()"))), (".append", '["'))


@_task(
    "bool_flip",
    (" True", " False"),
    "Inside `if not flag:` the flag is set ` True`, inside `if flag:` it is set ` False`.",
)
def _bool_flip(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    flag = rng.choice(("done", "found", "ready", "seen", "changed", "valid", "active", "enabled", "is_set", "ok"))
    init = f"{indent}{flag} = {rng.choice(('True', 'False'))}\n" if rng.random() < 0.6 else ""
    between = statements(rng, indent, 0, 2, {flag})
    inner = statements(rng, indent + INDENT, 0, 1, {flag})
    rest = "\n" + following(rng, indent + INDENT, {flag})
    prompts = [f"{head}{init}{between}{indent}if {neg}{flag}:\n{inner}{indent}{INDENT}{flag} =" for neg in ("not ", "")]
    return _same_rest(rest, *prompts)


@_task(
    "compare_or_assign",
    (" ==", " ="),
    "After an attribute in an `if`/`while`/`assert` condition comes ` ==`; after one starting a statement, ` =`.",
)
def _compare_or_assign(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    owner = "self" if indent == INDENT * 2 else pick_name(rng)
    attribute = f"{owner}.{rng.choice(('count', 'name', 'state', 'mode', 'size', 'value', 'status', 'level'))}"
    keyword = rng.choice(("if ", "if ", "while ", "assert ", "elif "))
    if keyword == "elif ":
        head += f"{indent}if {pick_name(rng)}:\n{statement(rng, indent + INDENT)}"
    value = literal(rng)
    compare_rest = f" {value}" + (":\n" + statement(rng, indent + INDENT) if keyword != "assert " else "\n")
    return (
        Instance(f"{head}{indent}{keyword}{attribute}", compare_rest),
        Instance(f"{head}{indent}{attribute}", f" {value}\n{following(rng, indent)}"),
    )


@_task(
    "for_in_or_assign",
    (" in", " ="),
    "After `for a, b` comes ` in`; after the same names starting a statement (`a, b`), ` =`.",
)
def _for_in_or_assign(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    names: list[str] = []
    while len(names) < rng.choice((2, 2, 3)):
        names.append(pick_name(rng, names))
    targets = ", ".join(names)
    source = rng.choice(
        (f"{pick_name(rng, names)}.items()", f"zip({', '.join(VARIABLES[: len(names)])})", f"{pick_name(rng, names)}")
    )
    return (
        Instance(f"{head}{indent}for {targets}", f" {source}:\n{statement(rng, indent + INDENT)}"),
        Instance(f"{head}{indent}{targets}", f" {source}\n{following(rng, indent)}"),
    )


@_task(
    "self_or_cls",
    ("(cls", "(self"),
    "A method under `@classmethod` takes `(cls`; under another decorator or none, `(self`.",
)
def _self_or_cls(rng: random.Random) -> tuple[Instance, Instance]:
    cls = rng.choice(("Parser", "Cache", "Node", "Reader", "Builder", "Config", "Handler", "Queue", "Model"))
    head = f"class {cls}:\n"
    if rng.random() < 0.5:
        head += f'{INDENT}"""{sentence(rng, 5).capitalize()}."""\n\n'
    if rng.random() < 0.6:
        head += f"{INDENT}def __init__(self, {pick_name(rng)}):\n{statements(rng, INDENT * 2, 1, 2)}\n"
    other = rng.choice(("@property", "@abstractmethod", "@functools.cache", "@override", None))
    other = f"{INDENT}{other}\n" if other else ""
    method = rng.choice(FUNCTIONS)
    args = "".join(f", {name}" for name in dict.fromkeys(pick_name(rng) for _ in range(rng.randint(0, 2))))
    rest = f"{args}):\n{statements(rng, INDENT * 2, 1, 2)}"
    return _same_rest(rest, f"{head}{INDENT}@classmethod\n{INDENT}def {method}", f"{head}{other}{INDENT}def {method}")


@_task(
    "from_import_or_as",
    (" import", " as"),
    "After `from <module>` comes ` import`; after `import <module>`, ` as` (in code that aliases imports).",
)
def _from_import_or_as(rng: random.Random) -> tuple[Instance, Instance]:
    head = "".join(
        rng.choice((f"import {rng.choice(MODULES)}\n", f"from {rng.choice(MODULES)} import {rng.choice(FUNCTIONS)}\n"))
        for _ in range(rng.randint(0, 4))
    )
    module = rng.choice(MODULES)
    alias = "".join(part[0] for part in module.split(".")) + rng.choice(("", "m", "lib"))
    return (
        Instance(f"{head}from {module}", f" {rng.choice(FUNCTIONS)}\n"),
        Instance(f"{head}import {module}", f" {alias}\n"),
    )


@_task(
    "range_or_enumerate",
    (" enumerate", " range"),
    "`for i, x in` iterates ` enumerate(...)`; `for i in` iterates ` range(...)`.",
)
def _range_or_enumerate(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    index = rng.choice(("i", "j", "k", "idx", "index", "n", "pos", "row"))
    item = pick_name(rng, {index})
    source = pick_name(rng, {index, item})
    body = statement(rng, indent + INDENT)
    return (
        Instance(f"{head}{indent}for {index}, {item} in", f"({source}):\n{body}"),
        Instance(f"{head}{indent}for {index} in", f"(len({source})):\n{body}"),
    )


@_task(
    "dict_items_unpack",
    (".items", ":\n"),
    "`for key, value in d` continues with `.items` (two names unpack a dict's pairs); `for value in d`, with `:`.",
)
def _dict_items_unpack(rng: random.Random) -> tuple[Instance, Instance]:
    head, indent = frame(rng)
    key = rng.choice(("key", "k", "name", "field", "word", "label", "attr"))
    value = pick_name(rng, {key})
    source = pick_name(rng, {key, value})
    body = statement(rng, indent + INDENT)
    return (
        Instance(f"{head}{indent}for {key}, {value} in {source}", f"():\n{body}"),
        Instance(f"{head}{indent}for {value} in {source}", body),
    )


BUILTIN_TASKS: tuple[Task, ...] = tuple(_REGISTRY.values())
"""The tasks this module defines (the synthetic corpus draws on these only, whatever is registered later)."""


# ----------------------------------------------------------------------------------------------- harvesting


def with_random_labels(task: Task, seed: int = 0) -> Task:
    """A nonsense control: the same prompts as ``task``, but which prompt of a pair is answered by which
    candidate is a coin flip, so no mechanism in any model can solve it beyond chance on held-out pairs."""

    def sampler(rng: random.Random) -> tuple[Instance, Instance]:
        first, second = task.sampler(rng)
        flip = hashlib.sha1(f"{seed}/{first.prompt}".encode()).digest()[0] % 2
        return (second, first) if flip else (first, second)

    return Task(f"{task.name}_random_labels", f"{task.description} (labels randomised)", task.candidates, sampler)


def harvest(name: str, split: str = "val", limit: int | None = None) -> list[Datapoint]:
    """Natural instances of a case-study task in the real-code corpus split ("train" or "val").

    The prompt is all the file's code before the answer (``make_batch(..., n_ctx=...)`` keeps its end).
    """
    from circuitlab.corpus import iter_corpus_files  # here, not at the top: the corpus builds on this module

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
        uses: list[tuple[ast.AST, str, str]] = []
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
