"""SparseTransformer: shapes, hooks, AbsTopK, residual start/stop, TransformerLens cache utilities."""

import dataclasses
import math

import pytest
import torch
from transformer_lens import ActivationCache
from transformer_lens.utilities import get_act_name

from circuitlab import tasks
from circuitlab.circuit import constant_writes
from circuitlab.config import SparseTransformerConfig
from circuitlab.model import NODE_LOCATIONS, SparseTransformer


@pytest.fixture(scope="module")
def tokens(tiny_config) -> torch.Tensor:
    return torch.randint(0, tiny_config.d_vocab, (3, 16), generator=torch.Generator().manual_seed(0))


def test_parameter_names_and_shapes_follow_hooked_transformer(tiny_model):
    cfg = tiny_model.cfg
    params = dict(tiny_model.named_parameters())
    assert params["embed.W_E"].shape == (cfg.d_vocab, cfg.d_model)
    assert params["blocks.1.attn.W_Q"].shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert params["blocks.1.attn.W_O"].shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert params["blocks.0.mlp.W_in"].shape == (cfg.d_model, 4 * cfg.d_model)
    assert params["blocks.0.mlp.W_out"].shape == (4 * cfg.d_model, cfg.d_model)
    assert params["unembed.W_U"].shape == (cfg.d_model, cfg.d_vocab)
    assert params["blocks.0.attn.sink_logits"].shape == (cfg.n_heads,)
    assert params["bigram.W_bigram"].shape == (cfg.d_vocab, cfg.d_vocab)
    assert tiny_model.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert tiny_model.W_out.shape == (cfg.n_layers, 4 * cfg.d_model, cfg.d_model)
    assert tiny_model.W_E is tiny_model.embed.W_E and tiny_model.W_U is tiny_model.unembed.W_U


def test_init_follows_the_paper_and_is_seeded(tiny_config):
    a, b = SparseTransformer(tiny_config), SparseTransformer(tiny_config)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert a.blocks[0].attn.W_Q.std().item() == pytest.approx(0.02, rel=0.1)
    assert a.blocks[0].mlp.W_out.std().item() == pytest.approx(0.02 / math.sqrt(2 * tiny_config.n_layers), rel=0.1)
    bigram = a.bigram.W_bigram
    assert bigram.min() >= 0 and bigram.max() < 0.02
    assert torch.all(a.blocks[1].attn.sink_logits == 0) and torch.all(a.blocks[1].attn.b_Q == 0)
    other = SparseTransformer(dataclasses.replace(tiny_config, seed=4))
    assert not torch.equal(a.embed.W_E, other.embed.W_E)


def test_cache_has_tl_hook_names_with_batch_dimension(tiny_config, tiny_model, tokens):
    logits, cache = tiny_model.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    assert logits.shape == (3, 16, tiny_config.d_vocab)
    batch, pos, cfg = 3, 16, tiny_model.cfg
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


def test_attention_is_causal_and_sinks_take_weight(tiny_config, tiny_model, tokens):
    _, cache = tiny_model.run_with_cache(tokens)
    pattern = cache["pattern", 1]
    assert torch.all(pattern.triu(diagonal=1) == 0)
    row_sums = pattern.sum(-1)
    assert torch.all(row_sums < 1) and torch.all(row_sums > 0)  # the sink absorbs the rest
    no_sink = SparseTransformer(dataclasses.replace(tiny_config, attn_sink=False))
    _, cache = no_sink.run_with_cache(tokens)
    torch.testing.assert_close(cache["pattern", 0].sum(-1), torch.ones(3, tiny_config.n_heads, 16))


def test_every_node_location_is_abs_topk_sparse(tiny_config, tiny_model, tokens):
    _, cache = tiny_model.run_with_cache(tokens)
    for layer in range(tiny_config.n_layers):
        for location, template in NODE_LOCATIONS.items():
            act = cache[template.format(layer=layer)]
            if location in ("q", "k", "v"):
                act = act.flatten(-2)  # AbsTopK runs jointly over heads
            kept = (act != 0).sum(-1)
            assert torch.all(kept == math.ceil(0.25 * act.shape[-1])), f"{location} layer {layer}"


def test_dense_config_has_no_activation_sparsity(tiny_config, tokens):
    dense = SparseTransformer(SparseTransformerConfig.dense_twin(tiny_config))
    _, cache = dense.run_with_cache(tokens)
    assert (cache["blocks.0.mlp.hook_post"] != 0).float().mean() > 0.9


def test_start_and_stop_at_every_residual_site_reproduce_the_logits(tiny_config, tiny_model, tokens):
    logits = tiny_model(tokens)
    for site in tiny_model.residual_sites:
        resid = tiny_model(tokens, stop_at=site)
        assert resid.shape == (3, 16, tiny_config.d_model)
        resumed = tiny_model(resid, start_at=site, tokens=tokens)
        torch.testing.assert_close(resumed, logits, rtol=0, atol=1e-6)
    _, cache = tiny_model.run_with_cache(tokens)
    torch.testing.assert_close(tiny_model(tokens, stop_at="blocks.1.hook_resid_mid"), cache["resid_mid", 1])
    torch.testing.assert_close(tiny_model(tokens, stop_at="blocks.1.hook_resid_pre"), cache["resid_pre", 1])


def test_bad_residual_site_and_missing_tokens_are_explained(tiny_config, tiny_model, tokens):
    with pytest.raises(ValueError, match="not a residual site"):
        tiny_model(tokens, stop_at="blocks.0.attn.hook_q")
    resid = tiny_model(tokens, stop_at="blocks.0.hook_resid_mid")
    with pytest.raises(ValueError, match="bigram table"):
        tiny_model(resid, start_at="blocks.0.hook_resid_mid")
    with pytest.raises(TypeError, match="the input is the residual stream there, not 'x = 1'"):
        tiny_model("x = 1", start_at="blocks.0.hook_resid_mid")
    with pytest.raises(IndexError, match=rf"Token ids must lie in \[0, {tiny_config.d_vocab}\)"):
        tiny_model(resid, start_at="blocks.0.hook_resid_mid", tokens=tokens + tiny_config.d_vocab)


def test_token_ids_outside_the_vocabulary_are_named(tiny_config, tiny_model, tokens):
    vocab = tiny_config.d_vocab
    message = rf"Token ids must lie in \[0, {vocab}\) \(this model's d_vocab\); these run from \d+ to {vocab}"
    with pytest.raises(IndexError, match=message):
        tiny_model(torch.cat([tokens, torch.full((3, 1), vocab)], dim=1))
    with pytest.raises(IndexError, match=r"these run from -1 to"):
        tiny_model(torch.cat([torch.full((3, 1), -1), tokens], dim=1), return_type="loss")


def test_prompt_longer_than_n_ctx_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=f"n_ctx is {tiny_model.cfg.n_ctx}"):
        tiny_model(torch.zeros(1, tiny_model.cfg.n_ctx + 1, dtype=torch.long))


def test_loss_matches_manual_cross_entropy(tiny_model, tokens):
    logits, loss = tiny_model(tokens, return_type="both")
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(loss, manual)
    assert tiny_model(tokens, return_type="loss", loss_per_token=True).shape == (3, 15)


def test_hooks_patch_and_ablate(tiny_model, tokens):
    clean = tiny_model(tokens)

    def zero_head(z, hook):
        z[:, :, 0] = 0
        return z

    ablated = tiny_model.run_with_hooks(tokens, fwd_hooks=[(get_act_name("z", 1), zero_head)])
    assert not torch.allclose(ablated, clean)
    torch.testing.assert_close(tiny_model(tokens), clean)  # hooks are removed afterwards

    _, cache = tiny_model.run_with_cache(tokens)
    other = tokens.flip(0)

    def patch_resid(resid, hook):
        return cache[hook.name]

    patched = tiny_model.run_with_hooks(other, fwd_hooks=[("blocks.1.hook_resid_post", patch_resid)])
    # After patching the final residual stream, only the bigram logits still see the other tokens.
    torch.testing.assert_close(patched - tiny_model.bigram(other), clean - tiny_model.bigram(tokens), atol=1e-5, rtol=0)

    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: torch.zeros_like(x))]):
        assert not torch.allclose(tiny_model(tokens), clean)


def test_cache_utilities_decompose_the_residual_stream(tiny_config, tiny_model, tokens):
    _, cache = tiny_model.run_with_cache(tokens)
    components, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    torch.testing.assert_close(components.sum(0), cache["resid_post", 1], atol=1e-5, rtol=0)
    accumulated = cache.accumulated_resid()
    assert accumulated.shape == (tiny_config.n_layers + 1, 3, 16, tiny_config.d_model)
    heads = cache.stack_head_results(layer=-1)
    assert heads.shape == (tiny_config.n_layers * tiny_config.n_heads, 3, 16, tiny_config.d_model)


def test_head_results_sum_to_attention_output_without_abs_topk(tiny_config, tokens):
    dense = SparseTransformer(SparseTransformerConfig.dense_twin(tiny_config))
    _, cache = dense.run_with_cache(tokens)
    heads = cache.stack_head_results(layer=1)  # the heads of layer 0
    torch.testing.assert_close(heads.sum(0) + dense.blocks[0].attn.b_O, cache["attn_out", 0], atol=1e-6, rtol=0)


def test_weight_matrices_and_masks(tiny_config, tiny_model):
    matrices = tiny_model.weight_matrices()
    assert len(matrices) == 2 + 6 * tiny_config.n_layers
    for name, (param, axis) in matrices.items():
        assert param.shape[axis] == tiny_config.d_model, name
    masks = tiny_model.weight_masks()
    assert all(mask.all() for mask in masks.values())  # a freshly initialised model is dense


def test_config_rejects_bad_values_and_unknown_keys(tiny_config):
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
    assert SparseTransformerConfig.from_dict(tiny_config.to_dict()) == tiny_config


@pytest.mark.parametrize("attn_sink", [True, False])
def test_fused_attention_matches_the_explicit_pattern_in_values_and_gradients(tiny_config, tokens, attn_sink):
    """Unhooked, attention runs fused (SDPA); a hook on the pattern makes it materialise scores and pattern."""
    model = SparseTransformer(dataclasses.replace(tiny_config, attn_sink=attn_sink))
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
    assert seen == [(3, tiny_config.n_heads, 16, 16)] * tiny_config.n_layers
    torch.testing.assert_close(fused_loss, explicit_loss, rtol=0, atol=1e-6)
    for name, grad in explicit_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    logits, _ = model.run_with_cache(tokens)  # every hook point hooked: norms and attention run unfused
    torch.testing.assert_close(model(tokens), logits, rtol=0, atol=1e-5)


def test_fused_bigram_logits_equal_the_hooked_lookup(tiny_config, tokens):
    """Unhooked, the bigram rows are added in one fused pass; a hook on hook_bigram makes the model look them up
    as a tensor first. Logits are bitwise equal, and so are the gradients up to summation order."""
    model = SparseTransformer(tiny_config)

    def logits_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        logits = model(tokens)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    fused_logits, fused_grads = logits_and_grads()
    seen = []
    with model.hooks(fwd_hooks=[("hook_bigram", lambda rows, hook: seen.append(rows.shape))]):
        explicit_logits, explicit_grads = logits_and_grads()
    assert seen == [(3, 16, tiny_config.d_vocab)]
    assert torch.equal(fused_logits, explicit_logits)
    assert fused_grads["bigram.W_bigram"].count_nonzero() > 0
    for name, grad in explicit_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------ HookedTransformer-style helpers


def greedy_reference(model: SparseTransformer, tokens: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding spelled out: the argmax of a full forward pass over the last n_ctx tokens, n_new times."""
    for _ in range(n_new):
        next_token = model(tokens[:, -model.cfg.n_ctx :])[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
    return tokens


def test_generate_greedy_matches_a_forward_pass_per_token(tiny_model):
    prompt = tiny_model.to_tokens("x = [[1, 2], [3")
    expected = greedy_reference(tiny_model, prompt, 6)
    generated = tiny_model.generate(prompt, max_new_tokens=6, stop_at_eos=False)
    assert torch.equal(generated, expected)
    text = tiny_model.generate("x = [[1, 2], [3", max_new_tokens=6, stop_at_eos=False)  # a string in, a string out
    assert text == tiny_model.tokenizer.decode(expected[0, 1:].tolist(), skip_special_tokens=True)
    assert text.startswith("x = [[1, 2], [3")
    cfg = tiny_model.cfg
    full = torch.randint(1, cfg.d_vocab, (2, cfg.n_ctx), generator=torch.Generator().manual_seed(1))  # fills n_ctx
    assert torch.equal(tiny_model.generate(full, max_new_tokens=3), greedy_reference(tiny_model, full, 3))


def test_generate_samples_reproducibly_and_stops_at_the_end_of_text_token(tiny_model):
    prompt = tiny_model.to_tokens("for i in range(")
    first, again = (tiny_model.generate(prompt, max_new_tokens=8, temperature=1.0, seed=7) for _ in range(2))
    assert torch.equal(first, again)
    others = [tiny_model.generate(prompt, max_new_tokens=8, temperature=1.0, seed=seed) for seed in range(8, 12)]
    assert any(not torch.equal(first, other) for other in others)
    cold = tiny_model.generate(prompt, max_new_tokens=8, temperature=1e-4, seed=7)  # sampling tends to greedy
    assert torch.equal(cold, greedy_reference(tiny_model, prompt, 8))
    with torch.no_grad():
        tiny_model.unembed.b_U[0] = 100.0  # token 0, <|endoftext|>, now always wins
    assert tiny_model.generate(prompt, max_new_tokens=8).shape == (1, prompt.shape[1] + 1)
    assert tiny_model.generate(prompt, max_new_tokens=8, stop_at_eos=False).shape == (1, prompt.shape[1] + 8)


def test_to_single_token_agrees_with_the_task_candidates_and_round_trips(tiny_model):
    closers = tasks.get("bracket_counting").candidate_ids(tiny_model.tokenizer)
    assert (tiny_model.to_single_token("]]\n"), tiny_model.to_single_token("]\n")) == closers
    for text in ("]]\n", ".add", " +=", "')\n"):
        assert tiny_model.to_string([tiny_model.to_single_token(text)]) == text
    with pytest.raises(ValueError, match=r"'hello world' is 6 tokens \['h', 'el', 'lo', ' w', 'or', 'ld'\], not one"):
        tiny_model.to_single_token("hello world")


def test_token_residual_directions_are_the_unembedding_columns_that_give_the_logits(tiny_model):
    tokens = tiny_model.to_tokens("while True:\n    x")
    candidates = torch.tensor([5, 17, 300])
    directions = tiny_model.tokens_to_residual_directions(candidates)
    assert directions.shape == (3, tiny_model.cfg.d_model)
    assert torch.equal(tiny_model.tokens_to_residual_directions(17), tiny_model.W_U[:, 17])
    assert tiny_model.tokens_to_residual_directions(candidates.view(3, 1)).shape == (3, 1, tiny_model.cfg.d_model)
    logits, cache = tiny_model.run_with_cache(tokens)
    final = tiny_model.ln_final(cache["resid_post", -1])  # the residual stream as the unembedding reads it
    through_directions = final @ directions.T + tiny_model.unembed.b_U[candidates]
    without_bigram = (logits - tiny_model.bigram(tokens))[..., candidates]
    torch.testing.assert_close(through_directions, without_bigram, atol=1e-5, rtol=0)


def test_a_constant_write_replaces_its_sub_layer_exactly_and_skips_its_inner_hooks(tiny_model, tokens):
    cfg = tiny_model.cfg
    constants = {
        "blocks.0.hook_mlp_out": torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(1)),
        "blocks.1.hook_attn_out": torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(2)),
    }

    def write(name):
        return lambda activation, hook: constants[name].expand_as(activation)

    with torch.no_grad():
        expected = tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, write(name)) for name in constants])
        inner_hooks_ran = []
        inner = [
            (name, lambda activation, hook: inner_hooks_ran.append(hook.name))
            for name in ("blocks.0.hook_mlp_read", "blocks.0.mlp.hook_post", "blocks.1.attn.hook_q")
        ]
        with constant_writes(tiny_model, constants):
            skipped = tiny_model.run_with_hooks(tokens, fwd_hooks=inner)
        assert torch.equal(skipped, expected) and inner_hooks_ran == []
        assert not torch.equal(tiny_model(tokens), expected)  # the sub-layers run again on leaving
    with (
        pytest.raises(ValueError, match="blocks.0.hook_attn_read"),
        constant_writes(tiny_model, {"blocks.0.hook_attn_read": constants["blocks.0.hook_mlp_out"]}),
    ):
        pass
    with (
        pytest.raises(ValueError, match="blocks.5.hook_mlp_out"),
        constant_writes(tiny_model, {"blocks.5.hook_mlp_out": constants["blocks.0.hook_mlp_out"]}),
    ):
        pass
    assert all(block.attn_out_constant is None and block.mlp_out_constant is None for block in tiny_model.blocks)
