"""AbsTopK activation sparsity: keep exactly the `k` largest-magnitude entries of each vector, zero the rest.

The selection is not differentiated: the gradient flows to the kept entries only. On the CPU in float32 a
compiled kernel (numba) selects the entries; elsewhere (GPU, other dtypes) `torch.topk` does. Both keep
exactly `k` entries per vector; among entries of equal magnitude at the threshold the kernel keeps the
lowest indices, while `torch.topk` leaves the choice unspecified.

Why a kernel: `torch.topk` sorts (value, index) pairs row by row, about 1 µs per row of 128 on a CPU core,
which made AbsTopK the most expensive part of a training step. The kernel searches each row for its k-th
largest magnitude on the float32 bit pattern (non-negative floats order like their bits as integers): each
probe is one branch-free counting pass over a row that stays in cache, and the search stops as soon as
exactly k magnitudes reach the probe. Probes interpolate between the bracketing counts, start from the
previous row's threshold (rows of one activation have similar scales) and fall back to bisection every third
probe. On the shipped sparse model's activations a row takes about seven passes (one for its maximum and
number of nonzeros, six probes) where a plain bisection over the bits takes up to thirty-two.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor, nn

from circuitlab.fused import run_over_rows, takes_compiled_kernels

_MAGNITUDE_BITS = np.int32(0x7FFFFFFF)  # a float32's bits without the sign


@numba.njit(cache=True, boundscheck=False)
def _count_at_least(row: np.ndarray, threshold: np.int32) -> np.int32:
    count = np.int32(0)
    for j in range(row.shape[0]):
        count += np.int32((row[j] & _MAGNITUDE_BITS) >= threshold)
    return count


@numba.njit(cache=True, boundscheck=False)
def _kth_largest_magnitude(row: np.ndarray, k: int, guess: np.int64) -> tuple[np.int64, bool, np.int32]:
    """Search the bits of `row` (float32 viewed as int32) for the threshold of its k largest magnitudes.

    Returns (threshold, exact, n_above): with `exact`, exactly k magnitudes are >= threshold; otherwise the
    threshold is the k-th largest magnitude itself, shared by several entries, and n_above are greater.
    """
    top, n_nonzero = np.int32(0), np.int32(0)
    for j in range(row.shape[0]):
        magnitude = row[j] & _MAGNITUDE_BITS
        top = max(top, magnitude)
        n_nonzero += np.int32(magnitude > 0)
    if n_nonzero == k:  # common where weights are sparse: the k nonzero magnitudes are exactly the top k
        return np.int64(1), True, n_nonzero
    if n_nonzero < k:  # every nonzero entry, then the first zeros
        return np.int64(0), False, n_nonzero
    lo, count_lo = np.int64(1), n_nonzero  # invariant: count(>= lo) >= k > count(>= hi)
    hi, count_hi = np.int64(top) + 1, np.int32(0)
    probe_number = 0
    while hi - lo > 1:
        if probe_number == 0 and lo < guess < hi:
            probe = guess
        elif probe_number % 3 == 2:
            probe = lo + (hi - lo) // 2
        else:
            probe = lo + np.int64((hi - lo) * ((count_lo - k + 0.5) / (count_lo - count_hi)))
            probe = min(max(probe, lo + 1), hi - 1)
        probe_number += 1
        count = _count_at_least(row, np.int32(probe))
        if count >= k:
            lo, count_lo = probe, count
            if count == k:
                return lo, True, count
        else:
            hi, count_hi = probe, count
    return lo, False, count_hi


@numba.njit(cache=True, boundscheck=False)
def _abs_topk_rows(x: np.ndarray, k: int, out: np.ndarray, keep: np.ndarray, start: int, stop: int) -> None:
    """Rows [start, stop) of `x` ([rows, width], float32): `keep` is 1 at each row's k largest |x|, else 0;
    `out` is x * keep. Each row's search starts from the previous row's threshold."""
    bits = x.view(np.int32)
    one, zero = np.float32(1), np.float32(0)
    guess = np.int64(-1)
    for r in range(start, stop):
        threshold, exact, n_above = _kth_largest_magnitude(bits[r], k, guess)
        guess = threshold
        ties_to_keep = k - n_above  # entries equal to the threshold kept, lowest indices first
        for j in range(x.shape[1]):
            magnitude = bits[r, j] & _MAGNITUDE_BITS
            kept = magnitude >= threshold if exact else magnitude > threshold
            if not exact and magnitude == threshold and ties_to_keep > 0:
                kept = True
                ties_to_keep -= 1
            keep[r, j] = one if kept else zero
            out[r, j] = x[r, j] if kept else zero


@numba.njit(parallel=True, cache=True)
def _abs_topk_rows_parallel(x: np.ndarray, k: int, out: np.ndarray, keep: np.ndarray, n_chunks: int) -> None:
    n = x.shape[0]
    for chunk in numba.prange(n_chunks):
        _abs_topk_rows(x, k, out, keep, n * chunk // n_chunks, n * (chunk + 1) // n_chunks)


def _select_with_kernel(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(x with all but its top-k magnitudes zeroed, the float 0/1 keep mask), both shaped like x."""
    rows = x.detach().contiguous().view(-1, x.shape[-1])
    out, keep = torch.empty_like(rows), torch.empty_like(rows)
    run_over_rows(_abs_topk_rows, _abs_topk_rows_parallel, len(rows), rows.numpy(), k, out.numpy(), keep.numpy())
    return out.view(x.shape), keep.view(x.shape)


def abs_topk_mask(x: Tensor, k: int) -> Tensor:
    """Boolean mask of exactly the `k` largest-magnitude entries along the last dim."""
    if k >= x.shape[-1]:
        return torch.ones_like(x, dtype=torch.bool)
    if takes_compiled_kernels(x):
        return _select_with_kernel(x, k)[1].bool()
    index = x.detach().abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, index, True)


class _CompiledAbsTopK(torch.autograd.Function):
    """AbsTopK through the compiled kernel; the backward passes the gradient of the kept entries."""

    @staticmethod
    def forward(ctx, x: Tensor, k: int) -> Tensor:
        out, keep = _select_with_kernel(x, k)  # a float mask: the backward's multiply is fastest in one dtype
        ctx.save_for_backward(keep)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep, None


def abs_topk(x: Tensor, k: int) -> Tensor:
    """Keep exactly the `k` largest-magnitude entries of each vector along the last dim; zero the rest."""
    if k >= x.shape[-1]:
        return x
    if takes_compiled_kernels(x):
        return _CompiledAbsTopK.apply(x, k)
    return x * abs_topk_mask(x, k)


class AbsTopK(nn.Module):
    """AbsTopK activation sparsity over the last dimension (identity when `afrac` is None)."""

    def __init__(self, width: int, afrac: float | None):
        super().__init__()
        self.width = width
        self.k = width if afrac is None else max(1, math.ceil(afrac * width))

    def forward(self, x: Tensor) -> Tensor:
        return abs_topk(x, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}, width={self.width}"
