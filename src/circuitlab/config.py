"""The model configuration: HookedTransformerConfig's field names plus the sparse fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from circuitlab import settings

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
        settings.coerce_fields(self)
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        self.validate()

    def validate(self) -> None:
        """Raise a SettingsError naming every field whose value cannot build a model."""
        problems = []
        if self.format_version > CONFIG_FORMAT_VERSION:
            problems.append(
                f"format_version={self.format_version} is newer than this circuitlab understands "
                f"({CONFIG_FORMAT_VERSION}); upgrade circuitlab to load it"
            )
        positive, fraction = settings.at_least(1), settings.between(0, 1, open_low=True)
        settings.check(
            self,
            {
                **dict.fromkeys(("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx"), positive),
                "act_fn": settings.one_of(ACT_FNS),
                "normalization_type": settings.one_of(NORMALIZATION_TYPES),
                "positional_embedding_type": settings.one_of(POSITIONAL_EMBEDDING_TYPES),
                "eps": settings.above(0),
                "init_range": settings.at_least(0),
                "afrac": fraction,  # or None: dense activations
                "weight_l0": fraction,
                "embed_l0": fraction,
                "min_weights_per_unit": settings.at_least(0),
            },
            problems,
        )

    @property
    def attn_only(self) -> bool:
        """Every block has an MLP (TransformerLens' ActivationCache reads this field)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], source: str = "SparseTransformerConfig.from_dict"
    ) -> SparseTransformerConfig:
        """Build a config from a mapping (`settings.build`: unknown keys refused with the list of valid ones)."""
        return settings.build(cls, values, source)

    @classmethod
    def dense_twin(cls, cfg: SparseTransformerConfig, **changes: Any) -> SparseTransformerConfig:
        """The dense baseline of `cfg`: same shape, no AbsTopK, no weight sparsity."""
        return dataclasses.replace(cfg, afrac=None, weight_l0=1.0, embed_l0=1.0, **changes)
