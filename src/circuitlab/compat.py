"""Export a `SparseTransformer` into TransformerLens' own model class.

Where TransformerLens can express the same network (no AbsTopK, no bigram table, no attention sinks),
`to_transformer_lens` builds TransformerLens' native model (`TransformerBridge.boot_native` in 4.x) with
the same weights, so the two give the same logits and the same activations at the shared hook names.
It is the proof that circuitlab's models *are* HookedTransformer-style GPTs, plus three optional parts.
"""

from __future__ import annotations

import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import native  # registers TransformerBridge.boot_native = native.boot
from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

from circuitlab.model import SparseTransformer


def bridge_config(model: SparseTransformer) -> TransformerBridgeConfig:
    cfg = model.cfg
    return TransformerBridgeConfig(
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        n_layers=cfg.n_layers,
        n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        act_fn=cfg.act_fn,
        normalization_type=cfg.normalization_type,
        positional_embedding_type="standard",  # NoPE is exported as all-zero learned positions
        eps=cfg.eps,
    )


def to_transformer_lens(model: SparseTransformer) -> TransformerBridge:
    """TransformerLens' native model with `model`'s weights (raises if it has parts TransformerLens lacks)."""
    cfg = model.cfg
    unsupported = [
        name
        for name, present in (
            ("AbsTopK activation sparsity (afrac)", cfg.afrac is not None),
            ("the bigram table", cfg.bigram_table),
            ("attention sinks", cfg.attn_sink),
        )
        if present
    ]
    if unsupported:
        raise ValueError(
            f"TransformerLens has no equivalent of {', '.join(unsupported)}; export works for a model configured "
            "with afrac=None, bigram_table=False, attn_sink=False."
        )
    tl_cfg = bridge_config(model)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    if cfg.positional_embedding_type == "none":
        state["pos_embed.W_pos"] = torch.zeros(cfg.n_ctx, cfg.d_model)
    bridge = native.boot(tl_cfg)
    bridge.load_state_dict(convert_tl_checkpoint(state, tl_cfg), strict=True)
    return bridge.eval()
