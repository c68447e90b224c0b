"""Fused CPU versions of two model operations, used when no hook needs their intermediate tensors.

Each computes what the model's plain PyTorch code computes (a test checks values and gradients), in fewer
passes over memory: `SinkAttentionCPU` runs attention with sinks on the causal flash-attention kernels and
never holds a [pos, pos] pattern; `BigramLogitsCPU` adds the bigram table's rows to the logits without
first copying the looked-up rows out of the table. `run_over_rows` is how the compiled row kernels (the
bigram's here, AbsTopK's in `circuitlab.abstopk`) use threads.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_MIN_ROWS_PER_THREAD = 64  # fewer rows than this per thread are not worth a parallel region


def takes_compiled_kernels(*tensors: Tensor) -> bool:
    """Whether the compiled row kernels can run on these tensors: all on the CPU, all float32."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def run_over_rows(serial: Callable[..., None], parallel: Callable[..., None], n_rows: int, *args) -> None:
    """Run a row kernel on as many threads as PyTorch uses (`torch.set_num_threads`).

    `serial(*args, start, stop)` does rows [start, stop); `parallel(*args, n_chunks)` splits the rows into
    chunks over numba's threads. On one thread the serial kernel runs alone and numba starts no threads:
    its OpenMP threads keep spinning after a parallel call, so a one-thread run that used them took about
    1.4 cores, and two such runs side by side slowed each other about tenfold.
    """
    max_threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set from the environment at import
    n_threads = min(torch.get_num_threads(), max_threads, n_rows // _MIN_ROWS_PER_THREAD)
    if n_threads <= 1:
        serial(*args, 0, n_rows)
    else:
        numba.set_num_threads(n_threads)
        parallel(*args, n_threads)


class SinkAttentionCPU(torch.autograd.Function):
    """Causal attention whose softmax also sees one logit per head, the sink (a key with value zero), on the
    CPU flash-attention kernels: as fast as plain causal attention, with exact gradients.

    Forward: the causal kernel gives z' and the logsumexp of each query's scores; the sink takes a share
    p_sink = exp(s - logsumexp(scores and s)) of the weight, so z = z' * (1 - p_sink). Backward: given that
    output and logsumexp, the causal backward kernel recomputes exactly the sink-normalised weights and
    returns the gradients of q, k and v; the sink's own gradient is -sum over queries of p_sink * (dz . z).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, sink_logits: Tensor) -> Tensor:
        z, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
        sink = sink_logits.view(1, -1, 1)
        logsumexp = torch.logaddexp(logsumexp, sink)
        p_sink = (sink - logsumexp).exp()  # [batch, head, query_pos]
        z = z * (1 - p_sink).unsqueeze(-1)
        ctx.save_for_backward(q, k, v, z, logsumexp, p_sink)
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        q, k, v, z, logsumexp, p_sink = ctx.saved_tensors
        grad_q, grad_k, grad_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_z.contiguous(), q, k, v, z, logsumexp, 0.0, True
        )
        grad_sink = -(p_sink * (grad_z * z).sum(-1)).sum((0, 2))
        return grad_q, grad_k, grad_v, grad_sink


@numba.njit(cache=True, boundscheck=False)
def _add_table_rows(x, table, index, out, start: int, stop: int) -> None:
    """out[i] = x[i] + table[index[i]] for rows i in [start, stop)."""
    for i in range(start, stop):
        row = index[i]
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] + table[row, j]


@numba.njit(parallel=True, cache=True)
def _add_table_rows_parallel(x, table, index, out, n_chunks: int) -> None:
    n = x.shape[0]
    for chunk in numba.prange(n_chunks):
        _add_table_rows(x, table, index, out, n * chunk // n_chunks, n * (chunk + 1) // n_chunks)


class BigramLogitsCPU(torch.autograd.Function):
    """`logits + F.embedding(tokens, W_bigram)` in one pass (float32 on the CPU): a tenth of the time of
    the two separate operations at [4096, 1024], which write the looked-up rows and the sum to new memory."""

    @staticmethod
    def forward(ctx, logits: Tensor, W_bigram: Tensor, tokens: Tensor) -> Tensor:
        n_vocab = W_bigram.shape[0]
        index = tokens.reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_vocab):
            raise IndexError(f"Token ids must lie in [0, {n_vocab}) to look up the bigram table.")
        rows = logits.detach().contiguous().view(-1, logits.shape[-1])
        out = torch.empty_like(rows)
        arrays = rows.numpy(), W_bigram.detach().contiguous().numpy(), index.numpy(), out.numpy()
        run_over_rows(_add_table_rows, _add_table_rows_parallel, len(rows), *arrays)
        ctx.save_for_backward(index)
        ctx.n_vocab = n_vocab
        return out.view(logits.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        grad_table = None
        if ctx.needs_input_grad[1]:
            (index,) = ctx.saved_tensors
            grad_rows = grad.contiguous().view(-1, grad.shape[-1])
            grad_table = grad.new_zeros(ctx.n_vocab, grad.shape[-1]).index_add_(0, index, grad_rows)
        return grad, grad_table, None
