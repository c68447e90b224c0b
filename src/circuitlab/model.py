"""`SparseTransformer`: a weight- and activation-sparse GPT that feels like TransformerLens' HookedTransformer.

Parameter names, shapes and hook names follow HookedTransformer, so code written for TransformerLens
(caches, patching, ablations) runs unchanged. On top of a plain GPT it has the paper's parts, each
switchable in `SparseTransformerConfig`: RMSNorm, per-head attention sinks, a dense bigram table, NoPE,
and AbsTopK activation sparsity at the eight *node locations* that pruning works on (`NODE_LOCATIONS`).
Weight sparsity is a property of the weights (pruned entries are exactly zero, see `circuitlab.sparsity`).

Speed: attention, RMSNorm and the bigram logits run as fused kernels (flash attention, `rms_norm`,
`circuitlab.fused`) and attention never holds a [pos, pos] pattern in memory, unless a hook is attached to
one of their hook points (as `run_with_cache` does); then they compute and pass through the same tensors
HookedTransformer does. Both ways give the same values and gradients (up to float rounding; a test checks
it). The fused sink and bigram kernels are CPU-only: on other devices those parts always run the explicit
way. AbsTopK is in `circuitlab.abstopk`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from circuitlab import checkpoint
from circuitlab.abstopk import AbsTopK
from circuitlab.config import SparseTransformerConfig
from circuitlab.fused import BigramLogitsCPU, SinkAttentionCPU, takes_compiled_kernels
from circuitlab.paths import DATA_DIR
from circuitlab.tokenizer import load_tokenizer

# The eight places whose channels are the nodes of a circuit, in forward-pass order: location -> hook name
# template. Everything that lists the locations (node shapes, their order, plot colours) derives from this table.
NODE_LOCATIONS: dict[str, str] = {
    "attn_read": "blocks.{layer}.hook_attn_read",  # normalised residual read by attention
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "attn_write": "blocks.{layer}.hook_attn_out",  # what attention adds to the residual stream
    "mlp_read": "blocks.{layer}.hook_mlp_read",  # normalised residual read by the MLP
    "mlp_neuron": "blocks.{layer}.mlp.hook_post",
    "mlp_write": "blocks.{layer}.hook_mlp_out",  # what the MLP adds to the residual stream
}
HEAD_LOCATIONS = ("q", "k", "v")  # channels [n_heads, d_head], numbered head * d_head + dim

# Hidden weight matrices subject to weight top-k, with the axis that indexes the residual stream.
HIDDEN_MATRICES: dict[str, int] = {
    "attn.W_Q": 1,
    "attn.W_K": 1,
    "attn.W_V": 1,
    "attn.W_O": 2,
    "mlp.W_in": 0,
    "mlp.W_out": 1,
}

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class RMSNorm(nn.Module):
    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Tensor) -> Tensor:
        if not (is_hooked(self.hook_scale) or is_hooked(self.hook_normalized)):
            return F.rms_norm(x, self.w.shape, self.w, self.eps)  # fused; equal up to float rounding
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w


class LayerNorm(nn.Module):
    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


def affine(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """x @ W + b over the last dim of x, as one fused matmul (`addmm`)."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[-1])


def is_hooked(hook_point: HookPoint) -> bool:
    """Whether a hook reads or edits this hook point (TransformerLens adds hooks as module hooks)."""
    return bool(
        hook_point._forward_hooks
        or hook_point._forward_pre_hooks
        or hook_point._backward_hooks
        or hook_point._backward_pre_hooks
    )


def stacked(module: str, name: str) -> property:
    """A property stacking every block's `module.name` parameter over layers, as HookedTransformer's W_Q etc."""
    return property(lambda model: torch.stack([getattr(getattr(block, module), name) for block in model.blocks]))


def make_norm(cfg: SparseTransformerConfig) -> nn.Module:
    return RMSNorm(cfg) if cfg.normalization_type == "RMS" else LayerNorm(cfg)


class Embed(nn.Module):
    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.W_pos[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)


class Unembed(nn.Module):
    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))

    def forward(self, x: Tensor) -> Tensor:
        return affine(x, self.W_U, self.b_U)


class BigramTable(nn.Module):
    """Dense next-token logits looked up from the current token (not sparsified, not weight-decayed)."""

    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        self.W_bigram = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_vocab))

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.W_bigram)


class Attention(nn.Module):
    """Causal multi-head attention with optional per-head sinks and AbsTopK on q, k, v (jointly over heads)."""

    causal_bias: Tensor  # a buffer: -inf above the diagonal

    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.cfg = cfg
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.sink_logits = nn.Parameter(torch.zeros(h)) if cfg.attn_sink else None
        self.topk_qkv = AbsTopK(h * e, cfg.afrac)
        causal_bias = torch.full((cfg.n_ctx, cfg.n_ctx), float("-inf")).triu(diagonal=1)
        self.register_buffer("causal_bias", causal_bias, persistent=False)  # 0 on and below the diagonal
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]; rows sum to 1 - sink weight
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]

    def forward(self, x: Tensor, last: Tensor | None = None) -> Tensor:
        """The output at every position, or with `last` ([batch] positions) at each row's `last` position alone
        ([batch, 1, d_model]): one query per row, over the keys and values of every position."""
        batch, n_pos, d_model = x.shape
        n_heads, d_head = self.cfg.n_heads, self.cfg.d_head
        # q, k and v in one matmul; AbsTopK runs on each of them jointly over heads.
        W_qkv = torch.cat(self.qkv_matrices(), dim=1)
        b_qkv = torch.cat([self.b_Q.flatten(), self.b_K.flatten(), self.b_V.flatten()])
        qkv = self.topk_qkv(affine(x, W_qkv, b_qkv).view(batch, n_pos, 3, -1)).view(batch, n_pos, 3, n_heads, d_head)
        q, k, v = qkv.unbind(dim=2)  # (indexing would make the backward fill three zero tensors of qkv's size)
        if last is not None:
            q = q[torch.arange(batch), last, None]
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        pattern_hooked = is_hooked(self.hook_attn_scores) or is_hooked(self.hook_pattern)
        # Fused sinks use the CPU flash-attention kernels; elsewhere attention with sinks runs explicit, and so
        # does a single query per row, whose pattern is small.
        if last is not None or pattern_hooked or (self.sink_logits is not None and x.device.type != "cpu"):
            z = self.explicit_attention(q, k, v, last)
        else:
            z = self.fused_attention(q, k, v)
        z = self.hook_z(z)
        return affine(z.flatten(2), self.W_O.reshape(-1, d_model), self.b_O)

    def qkv_matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """W_Q, W_K and W_V as [d_model, n_heads * d_head] matrices, column head * d_head + dim: the numbering
        of the q, k and v channels."""
        d_model = self.cfg.d_model
        W_Q, W_K, W_V = (W.permute(1, 0, 2).reshape(d_model, -1) for W in (self.W_Q, self.W_K, self.W_V))
        return W_Q, W_K, W_V

    def explicit_attention(self, q: Tensor, k: Tensor, v: Tensor, last: Tensor | None = None) -> Tensor:
        """z from the attention scores and pattern, materialised so that their hook points see them (with
        `last`, q holds one query per row, at that row's `last` position)."""
        batch, n_queries, n_keys = *q.shape[:2], k.shape[1]
        scores = (q * self.cfg.d_head**-0.5).transpose(1, 2) @ k.permute(0, 2, 3, 1)
        causal = self.causal_bias[:n_keys, :n_keys] if last is None else self.causal_bias[last, None, None, :n_keys]
        scores = self.hook_attn_scores(scores + causal)
        if self.sink_logits is None:
            pattern = scores.softmax(dim=-1)
        else:
            sink = self.sink_logits.view(1, -1, 1, 1).expand(batch, -1, n_queries, 1)
            pattern = torch.cat([scores, sink], dim=-1).softmax(dim=-1)[..., :-1]
        pattern = self.hook_pattern(pattern)
        return (pattern @ v.transpose(1, 2)).transpose(1, 2)

    def fused_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The same z as `explicit_attention` from fused kernels, without a [pos, pos] pattern in memory."""
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        if self.sink_logits is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            z = SinkAttentionCPU.apply(q, k, v, self.sink_logits)
        return z.transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        assert cfg.d_mlp is not None  # SparseTransformerConfig.__post_init__ sets it
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act_fn = ACTIVATIONS[cfg.act_fn]
        self.topk_neurons = AbsTopK(cfg.d_mlp, cfg.afrac)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp], after AbsTopK: the MLP neuron nodes

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(affine(x, self.W_in, self.b_in))
        post = self.hook_post(self.topk_neurons(self.act_fn(pre)))
        return affine(post, self.W_out, self.b_out)


class TransformerBlock(nn.Module):
    """Pre-norm block, split into its two residual sub-layers so a forward pass can start or stop between them."""

    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.topk_attn_read = AbsTopK(cfg.d_model, cfg.afrac)
        self.topk_attn_write = AbsTopK(cfg.d_model, cfg.afrac)
        self.topk_mlp_read = AbsTopK(cfg.d_model, cfg.afrac)
        self.topk_mlp_write = AbsTopK(cfg.d_model, cfg.afrac)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_read = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_read = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

        self.attn_out_constant: Tensor | None = None  # written instead of computing (`circuit.constant_writes`)
        self.mlp_out_constant: Tensor | None = None

    def attention_sublayer(self, resid_pre: Tensor, last: Tensor | None = None) -> Tensor:
        """The residual stream after attention; with `last` ([batch] positions), at those positions alone."""
        resid = resid_pre if last is None else resid_pre[torch.arange(len(last)), last, None]
        if self.attn_out_constant is not None:
            attn_out = self.hook_attn_out(self.attn_out_constant.expand_as(resid))
        else:
            read = self.hook_attn_read(self.topk_attn_read(self.ln1(resid_pre)))
            attn_out = self.hook_attn_out(self.topk_attn_write(self.attn(read, last)))
        return self.hook_resid_mid(resid + attn_out)

    def mlp_sublayer(self, resid_mid: Tensor) -> Tensor:
        if self.mlp_out_constant is not None:
            mlp_out = self.hook_mlp_out(self.mlp_out_constant.expand_as(resid_mid))
        else:
            read = self.hook_mlp_read(self.topk_mlp_read(self.ln2(resid_mid)))
            mlp_out = self.hook_mlp_out(self.topk_mlp_write(self.mlp(read)))
        return self.hook_resid_post(resid_mid + mlp_out)


TokensInput = str | Sequence[str] | Tensor


class SparseTransformer(HookedRootModule):
    """A GPT with TransformerLens' names and hooks plus the paper's sparsity (see the module docstring).

    >>> model = SparseTransformer(SparseTransformerConfig(n_layers=2, d_model=64, n_heads=4))
    >>> logits, cache = model.run_with_cache(tokens)
    >>> cache["pattern", 0].shape  # [batch, head, query_pos, key_pos]
    """

    def __init__(self, cfg: SparseTransformerConfig, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self._tokenizer = tokenizer
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding_type == "standard":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()
        # An nn.ModuleList, typed by its items so that `model.blocks[layer].attn.W_Q` type-checks.
        blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.blocks = cast(Sequence[TransformerBlock], blocks)
        self.ln_final = make_norm(cfg)
        self.unembed = Unembed(cfg)
        if cfg.bigram_table:
            self.bigram = BigramTable(cfg)
            self.hook_bigram = HookPoint()  # [batch, pos, d_vocab]
        self.init_weights()
        self.setup()

    # ------------------------------------------------------------------ construction

    @torch.no_grad()
    def init_weights(self) -> None:
        """The paper's init: N(0, init_range²), output projections scaled by 1/√(2·n_layers), biases and
        sinks zero, norms one, bigram table U[0, init_range). Seeded by `cfg.seed`."""
        generator = torch.Generator().manual_seed(self.cfg.seed)
        out_std = self.cfg.init_range / math.sqrt(2 * self.cfg.n_layers)
        for name, param in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("W_O", "W_out"):
                param.copy_(torch.randn(param.shape, generator=generator) * out_std)
            elif leaf == "W_bigram":
                param.copy_(torch.rand(param.shape, generator=generator) * self.cfg.init_range)
            elif leaf.startswith("W_"):
                param.copy_(torch.randn(param.shape, generator=generator) * self.cfg.init_range)
            elif leaf == "w":
                param.fill_(1.0)
            else:  # biases b_*, LayerNorm b, sink logits
                param.zero_()

    # ------------------------------------------------------------------ tokenizer

    @property
    def tokenizer(self):
        """The model's `tokenizers.Tokenizer`, loaded on first use from `cfg.tokenizer_path`."""
        if self._tokenizer is None:
            path = Path(self.cfg.tokenizer_path)
            if not path.is_absolute():
                path = DATA_DIR / path
            self._tokenizer = load_tokenizer(path)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool = True) -> Tensor:
        """Tokenise a string or a list of strings into [batch, pos] (lists right-padded with the BOS/pad id 0)."""
        texts = [text] if isinstance(text, str) else list(text)
        bos = [0] if prepend_bos else []
        rows = [bos + self.tokenizer.encode(t).ids for t in texts]
        tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return tokens

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [self.tokenizer.decode(row.tolist(), skip_special_tokens=False) for row in tokens]
        return self.tokenizer.decode(tokens.tolist(), skip_special_tokens=False)

    def to_str_tokens(self, text: str | Tensor, prepend_bos: bool = True) -> list[str]:
        tokens = self.to_tokens(text, prepend_bos)[0] if isinstance(text, str) else torch.as_tensor(text)
        return [self.tokenizer.decode([t], skip_special_tokens=False) for t in tokens.flatten().tolist()]

    def to_single_token(self, string: str) -> int:
        ids = self.tokenizer.encode(string).ids
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens {self.to_str_tokens(torch.tensor(ids))}, not one")
        return ids[0]

    def tokens_to_residual_directions(self, tokens: Tensor | int) -> Tensor:
        """Unembedding directions of `tokens` in the residual stream ([..., d_model])."""
        return self.W_U[:, torch.as_tensor(tokens)].movedim(0, -1)

    # ------------------------------------------------------------------ forward

    @property
    def residual_sites(self) -> list[str]:
        """Hook names of the residual stream between sub-layers: after the embedding, then after each
        attention and each MLP. `forward(start_at=..., stop_at=...)` takes these names."""
        sites = ["blocks.0.hook_resid_pre"]
        for layer in range(self.cfg.n_layers):
            sites += [f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_resid_post"]
        return sites

    def _site_index(self, site: str) -> int:
        sites = self.residual_sites
        if site.startswith("blocks.") and site.endswith(".hook_resid_pre") and site != sites[0]:
            layer = int(site.split(".")[1])
            site = f"blocks.{layer - 1}.hook_resid_post"  # the same point of the stream
        if site not in sites:
            raise ValueError(f"{site!r} is not a residual site; choose one of {sites}")
        return sites.index(site)

    def _step(self, index: int, resid: Tensor) -> Tensor:
        """Advance the residual stream from site `index` to site `index + 1`."""
        block = self.blocks[index // 2]
        if index % 2 == 0:
            return block.attention_sublayer(resid)
        resid = block.mlp_sublayer(resid)
        if index // 2 + 1 < self.cfg.n_layers:
            resid = self.blocks[index // 2 + 1].hook_resid_pre(resid)
        return resid

    def _as_tokens(self, input: TokensInput) -> Tensor:
        tokens = input if isinstance(input, Tensor) else self.to_tokens(input)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(
                f"The input is {tokens.shape[-1]} tokens long but this model's n_ctx is {self.cfg.n_ctx}; "
                f"keep the last n_ctx tokens (tokens[:, -{self.cfg.n_ctx}:]) or shorten the prompt."
            )
        if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.cfg.d_vocab:
            raise IndexError(
                f"Token ids must lie in [0, {self.cfg.d_vocab}) (this model's d_vocab); these run from "
                f"{int(tokens.min())} to {int(tokens.max())}. Tokenize with the model's own tokenizer (to_tokens)."
            )
        return tokens

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """The residual stream at `blocks.0.hook_resid_pre`."""
        resid = self.hook_embed(self.embed(tokens))
        if self.cfg.positional_embedding_type == "standard":
            resid = resid + self.hook_pos_embed(self.pos_embed(tokens))
        return self.blocks[0].hook_resid_pre(resid)

    def unembed_resid(self, resid: Tensor, tokens: Tensor | None) -> Tensor:
        """Logits from the final residual stream (plus the bigram logits of `tokens`)."""
        logits = self.unembed(self.ln_final(resid))
        if self.cfg.bigram_table:
            if tokens is None:
                raise ValueError("This model has a bigram table: pass tokens= so it can add the bigram logits.")
            W_bigram = self.bigram.W_bigram
            if takes_compiled_kernels(logits, W_bigram) and not is_hooked(self.hook_bigram):
                logits = BigramLogitsCPU.apply(logits, W_bigram, tokens)
            else:
                logits = logits + self.hook_bigram(self.bigram(tokens))
        return logits

    def forward(
        self,
        input: TokensInput,
        return_type: str | None = "logits",
        *,
        start_at: str | None = None,
        stop_at: str | None = None,
        tokens: Tensor | None = None,
        loss_per_token: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor] | None:
        """Run the model.

        `input` is a string, a list of strings or a [batch, pos] token tensor; with `start_at` it is instead
        the residual stream at that site ([batch, pos, d_model]; pass `tokens=` too when the model has a
        bigram table or a loss is asked for). With `stop_at`, return the residual stream at that site.
        `return_type`: "logits", "loss" (mean next-token cross-entropy), "both" or None.
        """
        if start_at is None:
            tokens = self._as_tokens(input)
            resid, start = self.embed_tokens(tokens), 0
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"With start_at={start_at!r} the input is the residual stream there, not {input!r}.")
            resid, start = input, self._site_index(start_at)
            if tokens is not None:
                tokens = self._as_tokens(tokens)
        stop = len(self.residual_sites) - 1 if stop_at is None else self._site_index(stop_at)
        for index in range(start, stop):
            resid = self._step(index, resid)
        if stop_at is not None:
            return resid
        logits = self.unembed_resid(resid, tokens)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if tokens is None:
            raise ValueError("A loss needs the tokens: pass tokens= along with start_at.")
        loss = self.next_token_loss(logits, tokens, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(f"return_type={return_type!r}; use 'logits', 'loss', 'both' or None")

    @staticmethod
    def next_token_loss(logits: Tensor, tokens: Tensor, per_token: bool = False) -> Tensor:
        """Cross-entropy of each position's logits against the next token: [batch, pos - 1], or its mean."""
        # The last position has no next token: its target is ignored, rather than slicing the logits, whose
        # backward would fill and copy a second [batch, pos, d_vocab] tensor.
        targets = F.pad(tokens[:, 1:], (0, 1), value=-100)  # cross_entropy's default ignore_index
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = loss.view(tokens.shape)[:, :-1]
        return loss if per_token else loss.mean()

    def run_with_cache(self, *model_args, **kwargs) -> tuple[Tensor, ActivationCache]:
        """Like HookedTransformer.run_with_cache: the output and a TransformerLens `ActivationCache`."""
        remove_batch_dim = kwargs.get("remove_batch_dim", False)
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    @torch.no_grad()
    def generate(
        self,
        input: str | Tensor,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> str | Tensor:
        """Greedy (temperature 0) or sampled continuation; keeps the last n_ctx tokens as context."""
        tokens = self.to_tokens(input) if isinstance(input, str) else torch.as_tensor(input).clone()
        generator = torch.Generator().manual_seed(seed)
        for _ in range(max_new_tokens):
            logits = self(tokens[:, -self.cfg.n_ctx :])[:, -1]
            if temperature == 0:
                next_token = logits.argmax(-1, keepdim=True)
            else:
                probs = (logits / temperature).softmax(-1)
                next_token = torch.multinomial(probs, 1, generator=generator)
            tokens = torch.cat([tokens, next_token], dim=1)
            if stop_at_eos and tokens.shape[0] == 1 and next_token.item() == 0:
                break
        if isinstance(input, str):
            return self.tokenizer.decode(tokens[0, 1:].tolist(), skip_special_tokens=True)
        return tokens

    # ------------------------------------------------------------------ weights

    def weight_matrices(self) -> dict[str, tuple[nn.Parameter, int]]:
        """Every matrix subject to weight top-k: name -> (parameter, axis that indexes the residual stream)."""
        matrices = {"embed.W_E": (self.embed.W_E, 1), "unembed.W_U": (self.unembed.W_U, 0)}
        for layer, block in enumerate(self.blocks):
            for suffix, axis in HIDDEN_MATRICES.items():
                module_name, param_name = suffix.split(".")
                matrices[f"blocks.{layer}.{suffix}"] = (getattr(getattr(block, module_name), param_name), axis)
        return matrices

    def weight_masks(self) -> dict[str, Tensor]:
        """Which weights survive sparsification (pruned weights are stored as exact zeros)."""
        return {name: param.detach() != 0 for name, (param, _) in self.weight_matrices().items()}

    W_Q = stacked("attn", "W_Q")  # [n_layers, n_heads, d_model, d_head]
    W_K = stacked("attn", "W_K")
    W_V = stacked("attn", "W_V")
    W_O = stacked("attn", "W_O")  # [n_layers, n_heads, d_head, d_model]
    W_in = stacked("mlp", "W_in")  # [n_layers, d_model, d_mlp]
    W_out = stacked("mlp", "W_out")  # [n_layers, d_mlp, d_model]

    @property
    def W_E(self) -> Tensor:
        return self.embed.W_E

    @property
    def W_U(self) -> Tensor:
        return self.unembed.W_U

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, directory: str | Path, overwrite: bool = False) -> Path:
        return checkpoint.save_model(self, directory, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SparseTransformer:
        return checkpoint.load_model(directory, cls)
