"""From trained mask scores to a circuit: the smallest sufficient top-k and greedy cleanup.

Both work on a black-box `loss_of(...)` that returns a held-out (calibrated) task loss, so they are the same
for any model, task and ablation. Neither assumes the loss falls monotonically as nodes are added: on real
score orders it does not (a bisection over the whole range can land on a hump and return a circuit several
times too large), so `smallest_sufficient` scans up from k = 0 and only bisects inside the first bracket
where the loss crosses the target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple


def geometric_grid(n_total: int, ratio: float) -> list[int]:
    """0, 1, 2, ... growing by `ratio` (at least +1 each step) up to and including `n_total`."""
    if ratio <= 1:
        raise ValueError(f"ratio={ratio}: the scan's grid must grow, pass a ratio above 1")
    grid, k = [0], 1
    while k < n_total:
        grid.append(k)
        k = max(k + 1, round(k * ratio))
    return grid + [n_total]


def smallest_sufficient(loss_at: Callable[[int], float], target: float, n_total: int, ratio: float = 2**0.5) -> int:
    """The smallest k whose loss_at(k) <= target: scan a geometric grid from 0 up to the first k that holds,
    then bisect between it and the grid point before. `n_total` when nothing holds (not even everything).

    The bisection assumes the loss is monotone only inside that one bracket (a factor `ratio` wide).
    """
    previous = -1
    for k in geometric_grid(n_total, ratio):
        if loss_at(k) <= target:
            low, high = previous + 1, k
            while low < high:
                middle = (low + high) // 2
                if loss_at(middle) <= target:
                    high = middle
                else:
                    low = middle + 1
            return high
        previous = k
    return n_total


class Cleanup(NamedTuple):
    kept: list[int]  # in the order given
    removed: list[int]  # in the order given
    unsettled: int  # units still queued when the trial budget ran out (kept without a trial of their own)


def greedy_cleanup(
    kept: Sequence[int], loss_without: Callable[[frozenset[int]], float], target: float, max_trials: int = 200
) -> Cleanup:
    """Try removing `kept` (least needed first, as ordered) a block at a time; keep a removal when the loss of
    what is left stays <= target, and split a block that fails until single units are tried. Stops after
    `max_trials` loss evaluations (what is untried stays).

    This is what the paper's authors did by hand ("negligible nodes removed"), made systematic. Blocks (a
    sixteenth of the candidates, at least 4) save evaluations where most removals succeed and cost at most
    about twice the single-unit count where none do.
    """
    block = max(4, len(kept) // 16)
    removed: set[int] = set()
    queue = [list(kept[i : i + block]) for i in range(0, len(kept), block)]
    for _ in range(max_trials):
        if not queue:
            break
        trial = queue.pop(0)
        if loss_without(frozenset(removed | set(trial))) <= target:
            removed |= set(trial)
        elif len(trial) > 1:
            half = len(trial) // 2
            queue[:0] = [trial[:half], trial[half:]]
    kept_units, removed_units = [u for u in kept if u not in removed], [u for u in kept if u in removed]
    return Cleanup(kept_units, removed_units, unsettled=sum(len(block) for block in queue))
