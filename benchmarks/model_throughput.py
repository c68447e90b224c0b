"""Forward+backward throughput of the SparseTransformer against a plain GPT and TransformerLens' own model.

Prints one JSON line. Usage: python benchmarks/model_throughput.py [--steps N] [--rounds R]
All models share one shape; 2 threads, ctx 128, batch 32, at two sizes; medians of interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from circuitlab.compat import to_transformer_lens
from circuitlab.config import SparseTransformerConfig
from circuitlab.model import SparseTransformer

SIZES = {"2L-d128": dict(n_layers=2, d_model=128, n_heads=8), "4L-d256": dict(n_layers=4, d_model=256, n_heads=16)}


class PlainBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.qkv, self.proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.fc_in, self.fc_out = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, p, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, p, d))
        return x + self.fc_out(F.gelu(self.fc_in(self.ln2(x))))


class PlainGPT(nn.Module):
    """The reference: a plain nn.Module GPT of the same shape, using scaled_dot_product_attention."""

    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(PlainBlock(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_final = nn.RMSNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_pass(model: nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    """One forward+backward pass of next-token loss (gradients dropped afterwards)."""
    params = list(model.parameters())

    def run() -> None:
        logits = model(tokens)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
        for p in params:
            p.grad = None

    return run


def interleaved_tokens_per_second(passes: dict[str, Callable[[], None]], tokens: int, steps: int, rounds: int) -> dict:
    """Tokens/s of each pass: rounds alternate between the models and the median is reported, so a busy
    moment of the machine does not favour whichever model happened to run before it."""
    for run in passes.values():
        run()  # warm-up
    times = {name: [] for name in passes}
    for _ in range(rounds):
        for name, run in passes.items():
            times[name].append(median_seconds(run, steps))
    return {name: round(tokens / statistics.median(values)) for name, values in times.items()}


def measure(size: dict, steps: int, rounds: int, batch: int, n_ctx: int) -> dict:
    sparse_cfg = SparseTransformerConfig(**size, d_vocab=1024, n_ctx=n_ctx)
    dense_cfg = SparseTransformerConfig.dense_twin(sparse_cfg)
    plain_cfg = SparseTransformerConfig.dense_twin(sparse_cfg, bigram_table=False, attn_sink=False)
    tokens = torch.randint(0, sparse_cfg.d_vocab, (batch, n_ctx), generator=torch.Generator().manual_seed(0))
    plain = PlainGPT(plain_cfg)
    sparse = SparseTransformer(sparse_cfg)
    dense = SparseTransformer(dense_cfg)
    tl_model = to_transformer_lens(SparseTransformer(plain_cfg)).train()
    passes = {
        "plain_gpt": training_pass(plain, tokens),
        "dense_config": training_pass(dense, tokens),
        "sparse_config": training_pass(sparse, tokens),
        "transformer_lens": training_pass(tl_model, tokens),
    }
    result = interleaved_tokens_per_second(passes, tokens.numel(), steps, rounds)
    result["dense_vs_plain"] = round(result["dense_config"] / result["plain_gpt"], 3)
    result["sparse_vs_plain"] = round(result["sparse_config"] / result["plain_gpt"], 3)
    result["n_params"] = sum(p.numel() for p in sparse.parameters())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed passes per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n-ctx", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = {
        "benchmark": "model_throughput",
        "unit": "tokens/s forward+backward",
        "threads": args.threads,
        "batch": args.batch,
        "n_ctx": args.n_ctx,
        "torch": torch.__version__,
    }
    for name, size in SIZES.items():
        report[name] = measure(size, args.steps, args.rounds, args.batch, args.n_ctx)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
