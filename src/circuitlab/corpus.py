"""The training corpus as training reads it: memory-mapped token streams of real and synthetic Python, and a
batch sampler that is a pure function of (seed, step).

The streams are built by :mod:`circuitlab.build` on first use and again whenever the tokenizer changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from circuitlab.build import STREAM_NAMES, TOKENS_DIR, build_token_streams, stream_path, token_streams_are_current
from circuitlab.tokenizer import DEFAULT_TOKENIZER_PATH


def load_token_streams(tokenizer_path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Memory-mapped uint16 token streams, keys `STREAM_NAMES`; built on first use or when the tokenizer changed.
    Processes that need them at once (test workers, parallel trials) wait for one build instead of racing."""
    tokenizer_path = Path(tokenizer_path or DEFAULT_TOKENIZER_PATH)
    if not token_streams_are_current(tokenizer_path):
        TOKENS_DIR.mkdir(parents=True, exist_ok=True)
        with FileLock(TOKENS_DIR / ".build.lock"):
            if not token_streams_are_current(tokenizer_path):  # another process may have built them meanwhile
                build_token_streams(tokenizer_path)
    return {name: np.memmap(stream_path(name), dtype=np.uint16, mode="r") for name in STREAM_NAMES}


class TokenSampler:
    """Random context windows from the token streams: a `synthetic_fraction` of the rows from the stream of the
    synthetic `mix` (`circuitlab.synthetic.MIXES`), the rest from real code. In a `repeat_fraction` of the rows
    the second half repeats the first, so that predicting it pays only by copying from the context (what an
    induction head does); the other rows are as they would be without it. `batch(step, n)` depends only on
    (seed, step), so training resumes exactly and every distributed rank sees the same global batch."""

    def __init__(
        self,
        streams: dict[str, np.ndarray],
        split: str,
        n_ctx: int,
        synthetic_fraction: float,
        seed: int,
        mix: str = "templates",
        repeat_fraction: float = 0.0,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= synthetic_fraction <= 1:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {synthetic_fraction}")
        if not 0 <= repeat_fraction <= 1:
            raise ValueError(f"repeat_fraction must be in [0, 1], got {repeat_fraction}")
        if f"{mix}/{split}" not in streams:
            raise ValueError(f"no synthetic mix {mix!r}; the streams hold {sorted(streams)}")
        self.real, self.synthetic = streams[f"real/{split}"], streams[f"{mix}/{split}"]
        for name, stream in ((f"real/{split}", self.real), (f"{mix}/{split}", self.synthetic)):
            if len(stream) <= n_ctx:
                raise ValueError(f"n_ctx={n_ctx} is longer than the {name} stream ({len(stream)} tokens)")
        self.n_ctx, self.synthetic_fraction, self.seed = n_ctx, synthetic_fraction, seed
        self.repeat_fraction = repeat_fraction

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        from_synthetic = rng.random(batch_size) < self.synthetic_fraction
        offsets = np.arange(self.n_ctx)
        rows = np.empty((batch_size, self.n_ctx), dtype=np.int64)
        for use_synthetic, stream in ((False, self.real), (True, self.synthetic)):
            chosen = np.flatnonzero(from_synthetic == use_synthetic)
            starts = rng.integers(0, len(stream) - self.n_ctx, size=len(chosen))
            rows[chosen] = stream[starts[:, None] + offsets]
        if self.repeat_fraction:  # drawn last, so the rows themselves do not depend on it
            half = self.n_ctx // 2
            repeated = np.flatnonzero(rng.random(batch_size) < self.repeat_fraction)
            rows[repeated, self.n_ctx - half :] = rows[repeated, :half]
        return torch.from_numpy(rows)
