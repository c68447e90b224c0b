"""The task framework: contrast pairs, disjoint splits, ``Task``, batches, the paper's task loss, the registry.

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

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from torch import Tensor

from circuitlab.tasks.codegen import frame

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

FramedPair = tuple[tuple[str, str], tuple[str, str]]
"""A contrast pair inside a shared frame: (prompt text after the frame, rest) for each of its two instances."""

FramedSampler = Callable[[random.Random, str], FramedPair]
"""Draws a :data:`FramedPair` for a frame whose lines are indented by the given string."""


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


def select_rows(batch: TaskBatch, rows: Tensor) -> TaskBatch:
    """The given rows of a batch, with the padding columns none of them needs cut off."""
    last = batch.last[rows]
    points = [batch.datapoints[i] for i in rows.tolist()] if batch.datapoints else []
    return TaskBatch(
        batch.tokens[rows, : int(last.max()) + 1], last, batch.target[rows], batch.alternative[rows], points
    )


def pair_rows(pairs: Tensor) -> Tensor:
    """Batch rows of the given pairs (a pair's two prompts are adjacent rows), pair by pair."""
    return torch.stack([2 * pairs, 2 * pairs + 1], dim=1).flatten()


def length_buckets(batch: TaskBatch, n_buckets: int = 4) -> list[TaskBatch]:
    """The batch split into groups of similar prompt length, so little compute is spent on padding."""
    order = batch.last.argsort()
    return [select_rows(batch, rows) for rows in order.tensor_split(min(n_buckets, len(order)))]


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
        self.candidates = (candidates[0], candidates[1])
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
            f"circuitlab.build tokenizer), or change the task's candidates."
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


CHANCE_LOSS = math.log(2)  # per-prompt loss of a model (or circuit) that cannot tell a pair's two prompts apart


def task_loss(logits: Tensor, batch: TaskBatch, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy over the two candidate logits at each prompt's last position.

    Per prompt: ``-log softmax([target, alternative])[0]``. The paper's task datapoint is a pair (a positive and a
    negative sequence, its Appendix A.5) and its text does not say whether the loss is summed over the pair; if it
    is, the paper's loss is twice the "mean" here. ``reduction`` is "mean", "sum" or "none" (per prompt, shape [n]).
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

PAPER_TASKS: tuple[str, ...] = (
    "single_double_quote",
    "final_kwarg",
    "set_or_string",
    "set_or_string_fixedvarname",
    "class_init",
    "with_as",
    "bracket_brace",
    "with_open",
    "bracket_counting",
    "for_while",
    "else_elif",
    "fstring_brace",
    "if_ternary",
    "var_swap",
    "indent_for",
    "lambda_func",
    "if_equals",
    "enumerate_range",
    "var_if",
    "while_return_true",
)
"""The paper's twenty tasks (its Table 1, in that order): circuit sizes are averaged over these."""

RENAMED = {"range_or_enumerate": "enumerate_range"}
"""Earlier names of tasks that now carry the paper's name; :func:`get` still finds them (the shipped circuits
were saved under them)."""

_REGISTRY: dict[str, Task] = {}


def register(task: Task, overwrite: bool = False) -> Task:
    """Add a task to the registry (ValueError if the name is taken, unless ``overwrite``)."""
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"a task named {task.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    """The registered task called ``name`` (or once called so, see `RENAMED`); KeyError listing the names."""
    try:
        return _REGISTRY[RENAMED.get(name, name)]
    except KeyError:
        raise KeyError(f"no task named {name!r}; available tasks: {', '.join(names())}") from None


def names() -> list[str]:
    """Every registered task: the paper's twenty (`PAPER_TASKS`) first, then the extra tasks in registration
    order."""
    return [name for name in PAPER_TASKS if name in _REGISTRY] + [n for n in _REGISTRY if n not in PAPER_TASKS]


def define_task(name: str, candidates: tuple[str, str], description: str) -> Callable[[Sampler], Sampler]:
    """Decorator that registers a sampler as the task ``name``."""

    def decorate(sampler: Sampler) -> Sampler:
        register(Task(name, description, candidates, sampler))
        return sampler

    return decorate


def define_framed_task(
    name: str, candidates: tuple[str, str], description: str
) -> Callable[[FramedSampler], FramedSampler]:
    """Decorator that registers the task ``name`` for a sampler of what follows a shared frame: each prompt is
    the code of a :func:`frame` (a scope opened, a few lines in it), the frame's indentation, then the text the
    sampler draws for that indentation."""

    def decorate(sample_in_frame: FramedSampler) -> FramedSampler:
        def sampler(rng: random.Random) -> tuple[Instance, Instance]:
            head, indent = frame(rng)
            (first, first_rest), (second, second_rest) = sample_in_frame(rng, indent)
            return Instance(head + indent + first, first_rest), Instance(head + indent + second, second_rest)

        define_task(name, candidates, description)(sampler)
        return sample_in_frame

    return decorate


def same_rest(rest: str, first: str, second: str) -> tuple[Instance, Instance]:
    """A contrast pair of prompts that both continue with ``rest``."""
    return Instance(first, rest), Instance(second, rest)


# ------------------------------------------------------------------------------------------------ controls


def relabelled(task: Task, swap: Callable[[str], bool], name: str, description: str) -> Task:
    """``task``'s contrast pairs with their answers swapped wherever ``swap(first prompt of the pair)`` holds:
    the same prompts, answered by a rule of our choosing (the base of the nonsense controls)."""

    def sampler(rng: random.Random) -> tuple[Instance, Instance]:
        first, second = task.sampler(rng)
        return (second, first) if swap(first.prompt) else (first, second)

    return Task(name, description, task.candidates, sampler)


def with_random_labels(task: Task, seed: int = 0) -> Task:
    """A nonsense control: the same prompts as ``task``, but which prompt of a pair is answered by which
    candidate is a coin flip, so no mechanism in any model can solve it beyond chance on held-out pairs."""

    def coin(prompt: str) -> bool:
        return hashlib.sha1(f"{seed}/{prompt}".encode()).digest()[0] % 2 == 1

    return relabelled(task, coin, f"{task.name}_random_labels", f"{task.description} (labels randomised)")
