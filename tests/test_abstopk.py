"""AbsTopK: the compiled CPU kernel against the torch.topk reference, ties, gradients and fallbacks."""

import subprocess
import sys

import pytest
import torch

from circuitlab.abstopk import AbsTopK, abs_topk, abs_topk_mask


def topk_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """x with all but its k largest magnitudes per row zeroed, by torch.topk."""
    index = x.detach().abs().topk(k, dim=-1, sorted=False).indices
    return x * torch.zeros_like(x, dtype=torch.bool).scatter_(-1, index, True)


def test_abs_topk_keeps_exactly_k_largest_magnitudes():
    x = torch.tensor([[3.0, -5.0, 1.0, 0.5, -0.2], [0.1, 0.2, -0.3, 4.0, -4.5]])
    assert torch.equal(abs_topk(x, 2), torch.tensor([[3.0, -5.0, 0, 0, 0], [0, 0, 0, 4.0, -4.5]]))
    assert abs_topk(x, 5) is x


@pytest.mark.parametrize(
    "shape, k", [((64, 128), 32), ((3, 7, 3, 128), 32), ((50, 512), 128), ((9, 5), 1), ((4, 33), 32)]
)
def test_kernel_matches_the_torch_topk_reference(shape, k):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(k)) * torch.logspace(-3, 3, shape[-1])
    out = abs_topk(x, k)
    assert torch.equal(out, topk_reference(x, k))
    assert torch.equal(x * abs_topk_mask(x, k), out)
    assert torch.equal(out, abs_topk(x.double(), k).float())  # float64 takes the torch.topk path


def test_kernel_is_exact_on_rows_of_wildly_different_scales():
    """Each row's search starts from the previous row's threshold: a bad start may cost time, never accuracy."""
    generator = torch.Generator().manual_seed(0)
    scales = 10.0 ** torch.randint(-30, 30, (300, 1), generator=generator).float()
    x = torch.randn(300, 96, generator=generator) * scales
    x[::7] = 1.5  # one repeated value: every entry ties
    x[::11, :3] = float("inf")
    x[::13] = torch.randn(96, generator=generator) * 1e-42  # subnormal floats
    x[::17, 10:] = 0.0  # fewer nonzero entries than k
    x[::19, 24:] = 0.0  # exactly k nonzero entries
    x[5, :20], x[5, 20:] = 0.0, 1e-45  # the smallest subnormal: one bit above zero
    x.requires_grad_()
    out = abs_topk(x, 24)
    out.sum().backward()
    keep = x.grad
    assert torch.equal(keep.sum(-1), torch.full((300,), 24.0))
    assert torch.equal(out, x.detach() * keep)
    top_magnitudes = x.detach().abs().sort(-1).values[:, -24:]
    assert torch.equal(out.detach().abs().sort(-1).values[:, -24:], top_magnitudes)


def test_ties_at_the_threshold_keep_exactly_k_lowest_indices_first():
    x = torch.tensor([[0.0, 2.0, -1.0, 1.0, 1.0, -1.0, 0.0, 0.0]])
    out = abs_topk(x, 3)
    assert torch.equal(out, torch.tensor([[0.0, 2.0, -1.0, 1.0, 0, 0, 0, 0]]))
    zeros = torch.zeros(5, 16)
    zeros[:, 3] = 1.0
    x = zeros.requires_grad_()
    abs_topk(x, 4).sum().backward()  # three of the four kept entries are zeros: they get a gradient too
    assert torch.equal(x.grad[:, :4], torch.ones(5, 4)) and not x.grad[:, 4:].any()


def test_gradient_flows_to_the_kept_entries_only():
    x = torch.randn(6, 40, requires_grad=True)
    weights = torch.randn(6, 40)
    (abs_topk(x, 10) * weights).sum().backward()
    keep = topk_reference(x, 10) != 0
    assert torch.equal(x.grad, torch.where(keep, weights, 0.0))


def test_non_contiguous_and_empty_inputs():
    x = torch.randn(32, 20).t()  # [20, 32], rows not contiguous
    assert torch.equal(abs_topk(x, 8), topk_reference(x, 8))
    assert abs_topk(torch.empty(0, 16), 4).shape == (0, 16)


def test_module_rounds_k_up_and_is_identity_when_dense():
    assert AbsTopK(10, 0.25).k == 3
    x = torch.randn(2, 10)
    assert AbsTopK(10, None)(x) is x


@pytest.fixture
def torch_threads():
    """Set torch's thread count inside a test; restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_kernel_gives_the_same_rows_on_one_thread_and_on_several(torch_threads):
    x = torch.randn(1001, 128, generator=torch.Generator().manual_seed(0))  # rows split unevenly over threads
    torch_threads(1)
    serial = abs_topk(x, 32)
    torch_threads(2)
    assert torch.equal(abs_topk(x, 32), serial)
    assert torch.equal(serial, topk_reference(x, 32))


THREADS_STARTED_BY_A_ONE_THREAD_STEP = """
import os, torch
torch.set_num_threads(1)
from circuitlab import SparseTransformer, SparseTransformerConfig
model = SparseTransformer(SparseTransformerConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_vocab=64))
tokens = torch.randint(0, 64, (8, 64))
before = len(os.listdir("/proc/self/task"))
model(tokens, return_type="loss").backward()  # 512 rows: enough to split over threads
print(len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_one_thread_starts_no_kernel_threads():
    """numba's OpenMP threads spin between calls: a one-thread run must not start them."""
    command = [sys.executable, "-c", THREADS_STARTED_BY_A_ONE_THREAD_STEP]
    assert subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip() == "0"
