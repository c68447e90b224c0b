"""Fixtures shared across the tests: one tiny model and its config.

The tiny model has the paper's architecture (AbsTopK, attention sinks, bigram table) at a size that builds in
milliseconds, and the shipped tokenizer's vocabulary, so task batches and `to_tokens` work on it. A test that
needs a variant derives it from the config (`dataclasses.replace(tiny_config, attn_sink=False)`).
"""

from __future__ import annotations

import os

import pytest
import torch

from circuitlab.config import SparseTransformerConfig
from circuitlab.model import SparseTransformer

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each (and the notebook kernels it starts) computes on one thread,
    # or torch's threads and the compiled kernels' would compete, four on two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

TINY_CONFIG = SparseTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=1024, n_ctx=64, seed=3)


@pytest.fixture(scope="session")
def tiny_config() -> SparseTransformerConfig:
    """Two layers of width 32, two heads, vocabulary 1024, context 64. Derive variants; never change it."""
    return TINY_CONFIG


@pytest.fixture
def tiny_model(tiny_config: SparseTransformerConfig) -> SparseTransformer:
    """A freshly initialised (seeded) tiny model in eval mode: each test gets its own, so it may edit the weights."""
    return SparseTransformer(tiny_config).eval()
