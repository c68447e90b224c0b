"""SparseTransformer: shapes, hooks, AbsTopK, residual start/stop, TransformerLens cache utilities."""

import dataclasses
import math

import pytest
import torch
from transformer_lens import ActivationCache
from transformer_lens.utilities import get_act_name

from circuitlab.config import SparseTransformerConfig
from circuitlab.model import NODE_LOCATIONS, SparseTransformer

TINY = SparseTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_vocab=50, n_ctx=24, seed=3)


@pytest.fixture(scope="module")
def model() -> SparseTransformer:
    return SparseTransformer(TINY).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, TINY.d_vocab, (3, 16), generator=torch.Generator().manual_seed(0))


def test_parameter_names_and_shapes_follow_hooked_transformer(model):
    cfg = model.cfg
    params = dict(model.named_parameters())
    assert params["embed.W_E"].shape == (cfg.d_vocab, cfg.d_model)
    assert params["blocks.1.attn.W_Q"].shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert params["blocks.1.attn.W_O"].shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert params["blocks.0.mlp.W_in"].shape == (cfg.d_model, 4 * cfg.d_model)
    assert params["blocks.0.mlp.W_out"].shape == (4 * cfg.d_model, cfg.d_model)
    assert params["unembed.W_U"].shape == (cfg.d_model, cfg.d_vocab)
    assert params["blocks.0.attn.sink_logits"].shape == (cfg.n_heads,)
    assert params["bigram.W_bigram"].shape == (cfg.d_vocab, cfg.d_vocab)
    assert model.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert model.W_out.shape == (cfg.n_layers, 4 * cfg.d_model, cfg.d_model)
    assert model.W_E is model.embed.W_E and model.W_U is model.unembed.W_U


def test_init_follows_the_paper_and_is_seeded():
    a, b = SparseTransformer(TINY), SparseTransformer(TINY)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert a.blocks[0].attn.W_Q.std().item() == pytest.approx(0.02, rel=0.1)
    assert a.blocks[0].mlp.W_out.std().item() == pytest.approx(0.02 / math.sqrt(2 * TINY.n_layers), rel=0.1)
    bigram = a.bigram.W_bigram
    assert bigram.min() >= 0 and bigram.max() < 0.02
    assert torch.all(a.blocks[1].attn.sink_logits == 0) and torch.all(a.blocks[1].attn.b_Q == 0)
    other = SparseTransformer(dataclasses.replace(TINY, seed=4))
    assert not torch.equal(a.embed.W_E, other.embed.W_E)


def test_cache_has_tl_hook_names_with_batch_dimension(model, tokens):
    logits, cache = model.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    assert logits.shape == (3, 16, TINY.d_vocab)
    batch, pos, cfg = 3, 16, model.cfg
    expected = {
        "hook_embed": (batch, pos, cfg.d_model),
        "blocks.0.hook_resid_pre": (batch, pos, cfg.d_model),
        "blocks.0.ln1.hook_normalized": (batch, pos, cfg.d_model),
        "blocks.0.ln1.hook_scale": (batch, pos, 1),
        "blocks.0.attn.hook_q": (batch, pos, cfg.n_heads, cfg.d_head),
        "blocks.0.attn.hook_z": (batch, pos, cfg.n_heads, cfg.d_head),
        "blocks.0.attn.hook_attn_scores": (batch, cfg.n_heads, pos, pos),
        "blocks.0.attn.hook_pattern": (batch, cfg.n_heads, pos, pos),
        "blocks.0.hook_attn_out": (batch, pos, cfg.d_model),
        "blocks.1.hook_resid_mid": (batch, pos, cfg.d_model),
        "blocks.1.mlp.hook_pre": (batch, pos, cfg.d_mlp),
        "blocks.1.mlp.hook_post": (batch, pos, cfg.d_mlp),
        "blocks.1.hook_mlp_out": (batch, pos, cfg.d_model),
        "blocks.1.hook_resid_post": (batch, pos, cfg.d_model),
        "ln_final.hook_normalized": (batch, pos, cfg.d_model),
        "hook_bigram": (batch, pos, cfg.d_vocab),
    }
    for name, shape in expected.items():
        assert cache[name].shape == shape, name
    for name in cache.cache_dict:
        assert cache[name].shape[0] == batch, f"{name} lacks the batch dimension"
    assert torch.equal(cache["pattern", 0], cache[get_act_name("pattern", 0)])
    assert torch.equal(cache["resid_post", -1], cache["blocks.1.hook_resid_post"])


def test_attention_is_causal_and_sinks_take_weight(model, tokens):
    _, cache = model.run_with_cache(tokens)
    pattern = cache["pattern", 1]
    assert torch.all(pattern.triu(diagonal=1) == 0)
    row_sums = pattern.sum(-1)
    assert torch.all(row_sums < 1) and torch.all(row_sums > 0)  # the sink absorbs the rest
    no_sink = SparseTransformer(dataclasses.replace(TINY, attn_sink=False))
    _, cache = no_sink.run_with_cache(tokens)
    torch.testing.assert_close(cache["pattern", 0].sum(-1), torch.ones(3, TINY.n_heads, 16))


def test_every_node_location_is_abs_topk_sparse(model, tokens):
    _, cache = model.run_with_cache(tokens)
    for layer in range(TINY.n_layers):
        for location, template in NODE_LOCATIONS.items():
            act = cache[template.format(layer=layer)]
            if location in ("q", "k", "v"):
                act = act.flatten(-2)  # AbsTopK runs jointly over heads
            kept = (act != 0).sum(-1)
            assert torch.all(kept == math.ceil(0.25 * act.shape[-1])), f"{location} layer {layer}"


def test_dense_config_has_no_activation_sparsity(tokens):
    dense = SparseTransformer(SparseTransformerConfig.dense_twin(TINY))
    _, cache = dense.run_with_cache(tokens)
    assert (cache["blocks.0.mlp.hook_post"] != 0).float().mean() > 0.9


def test_start_and_stop_at_every_residual_site_reproduce_the_logits(model, tokens):
    logits = model(tokens)
    for site in model.residual_sites:
        resid = model(tokens, stop_at=site)
        assert resid.shape == (3, 16, TINY.d_model)
        resumed = model(resid, start_at=site, tokens=tokens)
        torch.testing.assert_close(resumed, logits, rtol=0, atol=1e-6)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(model(tokens, stop_at="blocks.1.hook_resid_mid"), cache["resid_mid", 1])
    torch.testing.assert_close(model(tokens, stop_at="blocks.1.hook_resid_pre"), cache["resid_pre", 1])


def test_bad_residual_site_and_missing_tokens_are_explained(model, tokens):
    with pytest.raises(ValueError, match="not a residual site"):
        model(tokens, stop_at="blocks.0.attn.hook_q")
    resid = model(tokens, stop_at="blocks.0.hook_resid_mid")
    with pytest.raises(ValueError, match="bigram table"):
        model(resid, start_at="blocks.0.hook_resid_mid")
    with pytest.raises(IndexError, match=r"Token ids must lie in \[0, 50\)"):
        model(resid, start_at="blocks.0.hook_resid_mid", tokens=tokens + TINY.d_vocab)


def test_token_ids_outside_the_vocabulary_are_named(model, tokens):
    with pytest.raises(
        IndexError, match=r"Token ids must lie in \[0, 50\) \(this model's d_vocab\); these run from \d+ to 50"
    ):
        model(torch.cat([tokens, torch.full((3, 1), TINY.d_vocab)], dim=1))
    with pytest.raises(IndexError, match=r"these run from -1 to"):
        model(torch.cat([torch.full((3, 1), -1), tokens], dim=1), return_type="loss")


def test_prompt_longer_than_n_ctx_is_a_clear_error(model):
    with pytest.raises(ValueError, match="n_ctx is 24"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_loss_matches_manual_cross_entropy(model, tokens):
    logits, loss = model(tokens, return_type="both")
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, TINY.d_vocab), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, manual)
    assert model(tokens, return_type="loss", loss_per_token=True).shape == (3, 15)


def test_hooks_patch_and_ablate(model, tokens):
    clean = model(tokens)

    def zero_head(z, hook):
        z[:, :, 0] = 0
        return z

    ablated = model.run_with_hooks(tokens, fwd_hooks=[(get_act_name("z", 1), zero_head)])
    assert not torch.allclose(ablated, clean)
    torch.testing.assert_close(model(tokens), clean)  # hooks are removed afterwards

    _, cache = model.run_with_cache(tokens)
    other = tokens.flip(0)

    def patch_resid(resid, hook):
        return cache[hook.name]

    patched = model.run_with_hooks(other, fwd_hooks=[("blocks.1.hook_resid_post", patch_resid)])
    # After patching the final residual stream, only the bigram logits still see the other tokens.
    torch.testing.assert_close(patched - model.bigram(other), clean - model.bigram(tokens), atol=1e-5, rtol=0)

    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: torch.zeros_like(x))]):
        assert not torch.allclose(model(tokens), clean)


def test_cache_utilities_decompose_the_residual_stream(model, tokens):
    _, cache = model.run_with_cache(tokens)
    components, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    torch.testing.assert_close(components.sum(0), cache["resid_post", 1], atol=1e-5, rtol=0)
    accumulated = cache.accumulated_resid()
    assert accumulated.shape == (TINY.n_layers + 1, 3, 16, TINY.d_model)
    heads = cache.stack_head_results(layer=-1)
    assert heads.shape == (TINY.n_layers * TINY.n_heads, 3, 16, TINY.d_model)


def test_head_results_sum_to_attention_output_without_abs_topk(tokens):
    dense = SparseTransformer(SparseTransformerConfig.dense_twin(TINY))
    _, cache = dense.run_with_cache(tokens)
    heads = cache.stack_head_results(layer=1)  # the heads of layer 0
    torch.testing.assert_close(heads.sum(0) + dense.blocks[0].attn.b_O, cache["attn_out", 0], atol=1e-6, rtol=0)


def test_weight_matrices_and_masks(model):
    matrices = model.weight_matrices()
    assert len(matrices) == 2 + 6 * TINY.n_layers
    for name, (param, axis) in matrices.items():
        assert param.shape[axis] == TINY.d_model, name
    masks = model.weight_masks()
    assert all(mask.all() for mask in masks.values())  # a freshly initialised model is dense


def test_config_rejects_bad_values_and_unknown_keys():
    with pytest.raises(ValueError, match="afrac"):
        SparseTransformerConfig(afrac=1.5)
    with pytest.raises(ValueError, match="normalization_type"):
        SparseTransformerConfig(normalization_type="batch")
    with pytest.raises(
        ValueError, match=r"unknown SparseTransformerConfig field\(s\) \['n_layer'\]. Valid fields: n_layers"
    ):
        SparseTransformerConfig.from_dict({"n_layer": 2})
    with pytest.raises(ValueError, match="newer than this circuitlab"):
        SparseTransformerConfig(format_version=99)
    assert SparseTransformerConfig.from_dict(TINY.to_dict()) == TINY


@pytest.mark.parametrize("attn_sink", [True, False])
def test_fused_attention_matches_the_explicit_pattern_in_values_and_gradients(tokens, attn_sink):
    """Unhooked, attention runs fused (SDPA); a hook on the pattern makes it materialise scores and pattern."""
    model = SparseTransformer(dataclasses.replace(TINY, attn_sink=attn_sink))
    with torch.no_grad():
        for block in model.blocks:
            if attn_sink:
                block.attn.sink_logits.normal_()  # trained sinks are not zero

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = model(tokens, return_type="loss")
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    fused_loss, fused_grads = loss_and_grads()
    seen = []
    record_shape = [(lambda name: name.endswith("hook_pattern"), lambda pattern, hook: seen.append(pattern.shape))]
    with model.hooks(fwd_hooks=record_shape):
        explicit_loss, explicit_grads = loss_and_grads()
    assert seen == [(3, TINY.n_heads, 16, 16)] * TINY.n_layers
    torch.testing.assert_close(fused_loss, explicit_loss, rtol=0, atol=1e-6)
    for name, grad in explicit_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    logits, _ = model.run_with_cache(tokens)  # every hook point hooked: norms and attention run unfused
    torch.testing.assert_close(model(tokens), logits, rtol=0, atol=1e-5)


def test_fused_bigram_logits_equal_the_hooked_lookup(tokens):
    """Unhooked, the bigram rows are added in one fused pass; a hook on hook_bigram makes the model look them up
    as a tensor first. Logits are bitwise equal, and so are the gradients up to summation order."""
    model = SparseTransformer(TINY)

    def logits_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        logits = model(tokens)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    fused_logits, fused_grads = logits_and_grads()
    seen = []
    with model.hooks(fwd_hooks=[("hook_bigram", lambda rows, hook: seen.append(rows.shape))]):
        explicit_logits, explicit_grads = logits_and_grads()
    assert seen == [(3, 16, TINY.d_vocab)]
    assert torch.equal(fused_logits, explicit_logits)
    assert fused_grads["bigram.W_bigram"].count_nonzero() > 0
    for name, grad in explicit_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
