"""AbsTopK activation sparsity: keep exactly the `k` largest-magnitude entries of each vector, zero the rest.

The selection is not differentiated: the gradient flows to the kept entries only. On the CPU in float32 a
compiled kernel (numba) selects the entries; elsewhere (GPU, other dtypes) `torch.topk` does. Both keep
exactly `k` entries per vector; among entries of equal magnitude at the threshold the kernel keeps the
lowest indices, while `torch.topk` leaves the choice unspecified.

Why a kernel: `torch.topk` sorts (value, index) pairs row by row, about 1 µs per row of 128 on a CPU core,
which made AbsTopK the most expensive part of a training step. The kernel finds each row's k-th largest
magnitude by bisecting its float32 bit pattern (non-negative floats order like their bits), which is
branch-free counting over a row that stays in cache, and writes the masked row in the same pass.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor, nn

_MAGNITUDE_BITS = np.int32(0x7FFFFFFF)  # a float32's bits without the sign


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _abs_topk_rows(x: np.ndarray, k: int, out: np.ndarray, keep: np.ndarray) -> None:  # pragma: no cover - compiled
    """For each row of `x` ([rows, width], float32): `keep` marks its k largest |x|, `out` is x where kept, else 0."""
    bits = x.view(np.int32)
    rows, width = x.shape
    for r in numba.prange(rows):
        row = bits[r]
        # Bisect on the magnitude's bits, high to low: `threshold` grows to the k-th largest magnitude.
        threshold = np.int32(0)
        exact = False  # True once exactly k magnitudes are >= threshold: those are the top k
        for bit in range(30, -1, -1):
            candidate = threshold | np.int32(1 << bit)
            count = 0
            for j in range(width):
                count += np.int32((row[j] & _MAGNITUDE_BITS) >= candidate)
            if count >= k:
                threshold = candidate
                if count == k:
                    exact = True
                    break
        ties_to_keep = 0
        if not exact:  # threshold is the k-th largest magnitude, shared by several entries
            above = 0
            for j in range(width):
                above += np.int32((row[j] & _MAGNITUDE_BITS) > threshold)
            ties_to_keep = k - above
        for j in range(width):
            magnitude = row[j] & _MAGNITUDE_BITS
            kept = magnitude >= threshold if exact else magnitude > threshold
            if not exact and magnitude == threshold and ties_to_keep > 0:
                kept = True
                ties_to_keep -= 1
            keep[r, j] = kept
            out[r, j] = x[r, j] if kept else np.float32(0)


def abs_topk_mask(x: Tensor, k: int) -> Tensor:
    """Boolean mask of the `k` largest-magnitude entries along the last dim (the reference, via torch.topk)."""
    index = x.detach().abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, index, True)


class _CompiledAbsTopK(torch.autograd.Function):
    """AbsTopK on CPU float32 through the compiled kernel; backward passes the gradient of kept entries."""

    @staticmethod
    def forward(ctx, x: Tensor, k: int) -> Tensor:
        rows = x.detach().contiguous().view(-1, x.shape[-1])
        out = torch.empty_like(rows)
        keep = torch.empty(rows.shape, dtype=torch.bool)
        numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        _abs_topk_rows(rows.numpy(), k, out.numpy(), keep.numpy())
        keep = keep.view(x.shape)
        ctx.save_for_backward(keep)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0), None


def abs_topk(x: Tensor, k: int) -> Tensor:
    """Keep exactly the `k` largest-magnitude entries of each vector along the last dim; zero the rest."""
    if k >= x.shape[-1]:
        return x
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() > 0:
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
