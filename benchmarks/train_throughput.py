"""Training-step throughput of the weight-sparse recipe against a plain dense GPT, and its memory use.

Prints one JSON line. Usage: python benchmarks/train_throughput.py [--config FILE] [--steps N] [--rounds R]

- sparse_tokens_per_s: a full `circuitlab.train.training_step` of the config's model (forward, backward,
  gradient rescaling, Adam, weight decay, top-k projection) at its final L0, where the projection costs most;
- plain_tokens_per_s: forward, backward and AdamW of a plain nn.Module GPT of the same shape
  (scaled_dot_product_attention, no sparsity);
- projection_fraction: the share of a sparse step spent in the top-k projection;
- mfu: model FLOPs per second over a measured fp32 matmul peak (square matmuls, same threads);
- peak_rss_gb: peak resident memory of a short real training run of the config (a subprocess).
Timings alternate between the two models in rounds; sparse_vs_plain is the median over rounds of each round's
speed ratio (with its range), so a busy machine hurts both alike. Both run under the trainer's process
settings (`keep_freed_memory`: glibc's malloc reuses freed memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from circuitlab.model import SparseTransformer
from circuitlab.sparsity import lr_schedule, project_topk_
from circuitlab.train import keep_freed_memory, load_config, training_step

sys.path.insert(0, str(Path(__file__).parent))
from model_throughput import PlainGPT, median_seconds  # noqa: E402  (shared with the model benchmark)

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of a large square matmul: the most this CPU does with these threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    return 2 * size**3 / median_seconds(lambda: torch.matmul(a, b), repeats)


def flops_per_token(model: SparseTransformer) -> float:
    """Forward + backward FLOPs per token of a dense model of this shape: 6 per matmul weight (embedding and
    bigram lookups excluded) plus the attention scores and mixing over the full context (no causal halving)."""
    cfg = model.cfg
    matmul_weights = sum(p.numel() for name, (p, _) in model.weight_matrices().items() if name != "embed.W_E")
    attention = 2 * 2 * cfg.n_layers * cfg.n_ctx * cfg.n_heads * cfg.d_head
    return 6 * matmul_weights + 3 * attention


def peak_rss_gb(config: Path, steps: int) -> float:
    """Peak resident memory of `python -m circuitlab.train` on `config` for a few steps."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "circuitlab.train", "--config", str(config), "--out", out, "--no-progress"]
        subprocess.run([*command, "--set", f"train.steps={steps}"], check=True, cwd=ROOT, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "sparse.yaml")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rss-steps", type=int, default=6, help="steps of the real run whose peak memory is read")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    model_cfg, train_cfg = load_config(args.config)
    tokens = torch.randint(0, model_cfg.d_vocab, (train_cfg.batch_size, model_cfg.n_ctx))
    tokens_per_step = tokens.numel()

    sparse = SparseTransformer(model_cfg)
    sparse_optimizer = torch.optim.Adam(sparse.parameters(), betas=train_cfg.betas, eps=train_cfg.eps)
    lr = lr_schedule(train_cfg.steps // 2, train_cfg.steps, train_cfg.lr, train_cfg.warmup_frac)
    l0, l0_embed = model_cfg.weight_l0, model_cfg.embed_l0

    def sparse_step() -> None:
        training_step(
            sparse, sparse_optimizer, tokens, lr=lr, l0=l0, l0_embed=l0_embed, weight_decay=train_cfg.weight_decay
        )

    plain = PlainGPT(model_cfg)
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=lr, betas=train_cfg.betas)

    def plain_step() -> None:
        logits = plain(tokens)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad(set_to_none=True)

    sparse_step(), plain_step()  # warm-up; the first sparse step also prunes to the final L0
    sparse_times, plain_times, projection_times = [], [], []
    for _ in range(args.rounds):
        sparse_times.append(median_seconds(sparse_step, args.steps))
        plain_times.append(median_seconds(plain_step, args.steps))
        projection_times.append(
            median_seconds(
                lambda: project_topk_(sparse.weight_matrices(), l0, l0_embed, model_cfg.min_weights_per_unit),
                args.steps,
            )
        )
    # Each round's two timings are seconds apart, so their ratio is steadier than either timing on a busy machine.
    ratios = sorted(plain / sparse for sparse, plain in zip(sparse_times, plain_times, strict=True))
    sparse_seconds, plain_seconds = statistics.median(sparse_times), statistics.median(plain_times)
    peak = matmul_peak_flops()
    sparse_tokens_per_s = tokens_per_step / sparse_seconds
    report = {
        "benchmark": "train_throughput",
        "config": args.config.name,
        "threads": args.threads,
        "batch": train_cfg.batch_size,
        "n_ctx": model_cfg.n_ctx,
        "sparse_tokens_per_s": round(sparse_tokens_per_s),
        "plain_tokens_per_s": round(tokens_per_step / plain_seconds),
        "sparse_vs_plain": round(statistics.median(ratios), 3),
        "sparse_vs_plain_range": [round(ratios[0], 3), round(ratios[-1], 3)],
        "projection_fraction": round(statistics.median(projection_times) / sparse_seconds, 4),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "mfu": round(flops_per_token(sparse) * sparse_tokens_per_s / peak, 4),
        "plain_mfu": round(flops_per_token(sparse) * tokens_per_step / plain_seconds / peak, 4),
        "peak_rss_gb": round(peak_rss_gb(args.config, args.rss_steps), 3),
        "torch": torch.__version__,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
