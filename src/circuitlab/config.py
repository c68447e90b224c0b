"""The model configuration: HookedTransformerConfig's field names plus the sparse fields."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FORMAT_VERSION = 1

ACT_FNS = ("gelu", "gelu_new", "relu")
NORMALIZATION_TYPES = ("RMS", "LN")
POSITIONAL_EMBEDDING_TYPES = ("none", "standard")


@dataclass
class SparseTransformerConfig:
    """Shape and architecture of a `SparseTransformer`.

    The first block of fields mirrors TransformerLens' `HookedTransformerConfig`; the rest switch on the
    paper's architectural choices (attention sinks, bigram table, AbsTopK activation sparsity) and record
    the weight sparsity the model is trained to (`weight_l0`, `embed_l0`, `min_weights_per_unit`).
    Defaults are the paper's architecture at the handbook's CPU scale.
    """

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 8
    d_head: int = 16
    d_mlp: int | None = None  # 4 * d_model when None
    d_vocab: int = 1024
    n_ctx: int = 128
    act_fn: str = "gelu"
    normalization_type: str = "RMS"
    positional_embedding_type: str = "none"  # "none" is NoPE, as in the paper
    eps: float = 1e-5
    init_range: float = 0.02
    seed: int = 0

    attn_sink: bool = True  # a learned per-head logit the softmax can attend to instead of any token
    bigram_table: bool = True  # dense [d_vocab, d_vocab] logits added from the current token
    afrac: float | None = 0.25  # AbsTopK keep fraction at the eight node locations; None = dense
    weight_l0: float = 1.0  # fraction of weights kept in each hidden matrix; 1.0 = dense
    embed_l0: float = 1.0  # the same for the embedding and unembedding
    min_weights_per_unit: int = 4  # every neuron / q,k,v,o channel keeps at least this many weights

    tokenizer_path: str = "tokenizer.json"  # relative to the data folder unless absolute
    format_version: int = field(default=CONFIG_FORMAT_VERSION)

    def __post_init__(self) -> None:
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming every field whose value cannot build a model."""
        problems = []
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name}={value!r} must be a positive integer")
        if self.act_fn not in ACT_FNS:
            problems.append(f"act_fn={self.act_fn!r} must be one of {ACT_FNS}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            problems.append(f"normalization_type={self.normalization_type!r} must be one of {NORMALIZATION_TYPES}")
        if self.positional_embedding_type not in POSITIONAL_EMBEDDING_TYPES:
            problems.append(
                f"positional_embedding_type={self.positional_embedding_type!r} must be one of "
                f"{POSITIONAL_EMBEDDING_TYPES}"
            )
        if self.afrac is not None and not 0 < self.afrac <= 1:
            problems.append(f"afrac={self.afrac!r} must be in (0, 1], or None for dense activations")
        for name in ("weight_l0", "embed_l0"):
            if not 0 < getattr(self, name) <= 1:
                problems.append(f"{name}={getattr(self, name)!r} must be in (0, 1]")
        if self.min_weights_per_unit < 0:
            problems.append(f"min_weights_per_unit={self.min_weights_per_unit!r} must be >= 0")
        if self.format_version > CONFIG_FORMAT_VERSION:
            problems.append(
                f"format_version={self.format_version} is newer than this circuitlab understands "
                f"({CONFIG_FORMAT_VERSION}); upgrade circuitlab to load it"
            )
        if problems:
            raise ValueError("Invalid SparseTransformerConfig: " + "; ".join(problems))

    @property
    def attn_only(self) -> bool:
        """Every block has an MLP (TransformerLens' ActivationCache reads this field)."""
        return False

    @property
    def is_sparse(self) -> bool:
        return self.afrac is not None or self.weight_l0 < 1 or self.embed_l0 < 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SparseTransformerConfig:
        """Build a config, rejecting unknown keys with the list of valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown SparseTransformerConfig field(s) {unknown}. Valid fields: {sorted(known)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SparseTransformerConfig:
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint's config is corrupt") from err
        return cls.from_dict(values)

    @classmethod
    def dense_twin(cls, cfg: SparseTransformerConfig, **changes: Any) -> SparseTransformerConfig:
        """The dense baseline of `cfg`: same shape, no AbsTopK, no weight sparsity."""
        return dataclasses.replace(cfg, afrac=None, weight_l0=1.0, embed_l0=1.0, **changes)
