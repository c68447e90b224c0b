"""TransformerLens compatibility: export into TransformerLens' own model class gives the same network."""

import dataclasses

import pytest
import torch

from circuitlab.compat import to_transformer_lens
from circuitlab.model import SparseTransformer

PLAIN = {"afrac": None, "bigram_table": False, "attn_sink": False}  # what TransformerLens' GPT lacks


@pytest.mark.parametrize("changes", [{}, {"normalization_type": "LN", "positional_embedding_type": "standard"}])
def test_export_gives_the_same_logits_and_activations(tiny_config, changes):
    model = SparseTransformer(dataclasses.replace(tiny_config, **PLAIN, **changes)).eval()
    with torch.no_grad():  # make biases and norms non-trivial so the comparison covers them
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", "w", "b"):
                param.add_(0.1 * torch.randn_like(param))
    bridge = to_transformer_lens(model)
    tokens = torch.randint(0, tiny_config.d_vocab, (3, 20), generator=torch.Generator().manual_seed(0))
    ours, our_cache = model.run_with_cache(tokens)
    theirs, their_cache = bridge.run_with_cache(tokens)
    assert (ours - theirs).abs().max().item() <= 1e-4
    # TransformerLens 4.3's bridge records the softmaxed pattern under hook_attn_scores, so compare
    # scores through the pattern instead.
    shared = [n for n in our_cache.cache_dict if n in their_cache.cache_dict and not n.endswith("hook_attn_scores")]
    assert len(shared) >= 10 * tiny_config.n_layers
    for name in shared:
        if our_cache[name].shape == their_cache[name].shape:
            torch.testing.assert_close(our_cache[name], their_cache[name], atol=1e-4, rtol=1e-4, msg=name)
    for name in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post"):
        assert name in shared
    torch.testing.assert_close(our_cache["attn_scores", 1].softmax(-1), their_cache["pattern", 1], atol=1e-5, rtol=0)


def test_export_refuses_parts_transformer_lens_lacks(tiny_model):
    with pytest.raises(ValueError, match="AbsTopK.*bigram table.*attention sinks"):
        to_transformer_lens(tiny_model)
