"""Weight sparsity, the paper's way: after every optimizer step keep only the largest-magnitude weights of
each matrix, with a sparsity target annealed from dense, and the schedules that go with it.

Pruned weights are set to exactly zero; their gradients stay dense, so a pruned weight comes back when
the optimizer makes it larger than the smallest kept one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from circuitlab.abstopk import abs_topk_mask

EMBEDDING_MATRICES = ("embed.W_E", "unembed.W_U")  # pruned to `embed_l0`; every other matrix to `weight_l0`

WeightMatrices = dict[str, tuple[nn.Parameter, int]]  # name -> (matrix, axis that indexes the residual stream)


def l0_schedule(step: int, total_steps: int, target: float, start_frac: float = 0.01, end_frac: float = 0.5) -> float:
    """Fraction of weights kept: 1 (dense) until `start_frac` of training, linear to `target` at `end_frac`."""
    start, end = start_frac * total_steps, end_frac * total_steps
    if end <= 0:  # no anneal: at the target from the first step (a run that starts from a sparse checkpoint)
        return target
    if step <= start:
        return 1.0
    if step >= end:
        return target
    return 1.0 + (target - 1.0) * (step - start) / (end - start)


def lr_schedule(
    step: int, total_steps: int, lr: float, warmup_frac: float = 0.01, l0_now: float = 1.0, l0_final: float = 1.0
) -> float:
    """Linear warm-up, linear decay to zero, times the "sharkfin" factor sqrt(l0_final / l0_now), which keeps
    the step size small while the model is still dense and lets it grow as the weights are pruned."""
    warmup = max(1, round(warmup_frac * total_steps))
    shape = (step + 1) / warmup if step < warmup else max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return lr * shape * math.sqrt(l0_final / l0_now)


@torch.no_grad()
def topk_mask(weight: Tensor, l0: float, residual_axis: int, min_per_unit: int) -> Tensor:
    """Bool mask of the ceil(l0 * numel) largest |weights|, united with each unit's `min_per_unit` largest
    (a unit is a neuron or q/k/v/o channel: everything but the residual axis)."""
    mask = abs_topk_mask(weight.reshape(1, -1), math.ceil(l0 * weight.numel())).view_as(weight)
    per_unit = min(min_per_unit, weight.shape[residual_axis])
    if per_unit > 0:
        by_unit = mask.movedim(residual_axis, -1)  # a view: writing into it writes into `mask`
        short = by_unit.sum(-1) < per_unit  # only the units the global top-k left short need their own top-k
        if short.any():
            by_unit[short] |= abs_topk_mask(weight.movedim(residual_axis, -1)[short], per_unit)
    return mask


@torch.no_grad()
def project_topk_(matrices: WeightMatrices, l0_hidden: float, l0_embed: float, min_per_unit: int) -> int:
    """Zero all but the kept weights of every matrix in place (`topk_mask`; the embedding and unembedding use
    `l0_embed`), e.g. of `model.weight_matrices()`; returns how many matrix weights are nonzero afterwards."""
    nonzero = 0
    for name, (param, axis) in matrices.items():
        l0 = l0_embed if name in EMBEDDING_MATRICES else l0_hidden
        if l0 < 1:
            param.mul_(topk_mask(param, l0, axis, min_per_unit))
        nonzero += int(param.count_nonzero())
    return nonzero


@torch.no_grad()
def normalize_gradients_(parameters: list[nn.Parameter]) -> float:
    """Rescale all gradients together so their global root-mean-square is 1; returns the RMS before."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = sum(g.numel() for g in grads)
    rms = math.sqrt(float(torch.stack([g.pow(2).sum() for g in grads]).sum()) / total)
    if rms > 0:
        torch._foreach_div_(grads, rms)
    return rms
