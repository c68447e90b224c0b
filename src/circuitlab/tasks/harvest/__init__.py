"""Natural instances of the paper's tasks in real code, harvested from the corpus snapshot.

A natural instance is a :class:`~circuitlab.tasks.core.Datapoint` whose prompt is all of a real file's code
before the place where a task's question is asked, cut where the templated prompts end, whose target is the
task's candidate that the file really goes on with, and whose alternative is the other candidate. One module per
task family finds the places (:mod:`.strings`, :mod:`.brackets`, :mod:`.variables`, :mod:`.control`,
:mod:`.definitions`; shared scanning in :mod:`.scan`), each place only in the shape the task's sampler draws
(a loop over ``range`` or ``enumerate``, a mode letter in ``open(name, '...``). A place is kept only when the
code's next pre-token is the candidate, so the prompt ends on a token boundary before the answer.

Harvested: 18 of the paper's twenty (:data:`HARVESTED`, in the paper's order). Not harvested, because the
question cannot be asked of natural code with the task's candidates:

- ``var_swap``: its candidates are the names `` x`` and `` y``, so a natural instance is a swap ``x, y = y, x``;
  the snapshot has six swaps ``a, b = b, a``, none of ``x`` and ``y``.
- ``set_or_string_fixedvarname``: ``set_or_string`` asked of a variable always called ``x``; no ``x`` is ever
  given ``set()`` in the snapshot, and any natural instance would be one of ``set_or_string``'s.
"""

from __future__ import annotations

import tokenize

from circuitlab.snapshot import iter_corpus_files
from circuitlab.tasks.core import PAPER_TASKS, Datapoint, get
from circuitlab.tasks.harvest import brackets, control, definitions, strings, variables  # noqa: F401  (register)
from circuitlab.tasks.harvest.scan import HARVESTERS, Code

HARVESTED: tuple[str, ...] = tuple(name for name in PAPER_TASKS if name in HARVESTERS)
"""The tasks with natural instances, in the order of the paper's Table 1."""


def harvest(name: str, split: str = "val", limit: int | None = None) -> list[Datapoint]:
    """Natural instances of a task in the real-code corpus split ("train" or "val"), in file order, at most
    ``limit``. The prompt is all the file's code before the answer (``make_batch(..., n_ctx=...)`` keeps its end).
    """
    found: list[Datapoint] = []
    for _, source in iter_corpus_files(split):
        found.extend(harvest_source(name, source))
        if limit is not None and len(found) >= limit:
            return found[:limit]
    return found


def harvest_source(name: str, source: str) -> list[Datapoint]:
    """Natural instances of a task in one file's source code, in order (see :func:`harvest`); none if the
    file does not parse."""
    if name not in HARVESTERS:
        raise ValueError(
            f"task {name!r} has no harvester; natural instances exist for {', '.join(HARVESTED)}. Ask one of "
            f"those, or add a harvester in circuitlab.tasks.harvest (its docstring says why the others have none)."
        )
    harvester, candidates = HARVESTERS[name], get(name).candidates
    continued_by = harvester.continued_by or candidates
    try:
        code = Code(source)
    except (SyntaxError, tokenize.TokenError, ValueError):
        return []
    return [
        Datapoint(source[:cut], candidates[index], candidates[1 - index])
        for cut, index in sorted(set(harvester.find(code)))
        if code.pretokens.get(cut) == continued_by[index]
    ]
