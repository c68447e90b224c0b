"""Checkpoints: safetensors + JSON round trip, and clear errors for every way a checkpoint can be wrong."""

import dataclasses
import json

import pytest
import torch
from tokenizers import Tokenizer, models

from circuitlab.config import SparseTransformerConfig
from circuitlab.model import SparseTransformer

TINY = SparseTransformerConfig(n_layers=1, d_model=32, n_heads=2, d_vocab=40, n_ctx=16, seed=1)


def tiny_model(**changes) -> SparseTransformer:
    vocab = {f"t{i}": i for i in range(TINY.d_vocab)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    return SparseTransformer(dataclasses.replace(TINY, **changes), tokenizer=tokenizer)


def test_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].mlp.W_in[:5] = 0  # pruned weights survive as exact zeros
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    loaded = SparseTransformer.from_pretrained(tmp_path / "ckpt")
    tokens = torch.randint(0, TINY.d_vocab, (2, 10))
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    assert loaded.cfg == model.cfg
    for name, mask in model.weight_masks().items():
        assert torch.equal(loaded.weight_masks()[name], mask)
    assert loaded.tokenizer.to_str() == model.tokenizer.to_str()


def test_saving_never_overwrites_silently(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, overwrite=True)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a circuitlab checkpoint"):
        SparseTransformer.from_pretrained(tmp_path / "nowhere")


def test_truncated_weights(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        SparseTransformer.from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["attn_sink"] = False  # a sink-trained model loaded without sinks would be silently wrong
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unexpected tensors \['blocks.0.attn.sink_logits'\]"):
        SparseTransformer.from_pretrained(tmp_path)
    config["attn_sink"], config["d_mlp"] = True, 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatches blocks.0.mlp.W_in"):
        SparseTransformer.from_pretrained(tmp_path)


def test_config_from_a_newer_format_or_corrupt_json(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 7}))
    with pytest.raises(ValueError, match="newer than this circuitlab"):
        SparseTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SparseTransformer.from_pretrained(tmp_path)
