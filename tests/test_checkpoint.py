"""Checkpoints: safetensors + JSON round trip, clear errors for every way a checkpoint can be wrong, and training
states that survive a crash at any point of a save."""

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, models

from circuitlab import checkpoint
from circuitlab.checkpoint import (
    CheckpointError,
    find_training_state,
    load_training_state,
    save_training_state,
    write_text_atomic,
)
from circuitlab.config import SparseTransformerConfig
from circuitlab.model import SparseTransformer
from circuitlab.paths import CHECKPOINTS_DIR


def test_round_trip_gives_identical_outputs(tmp_path, tiny_model):
    model = tiny_model
    with torch.no_grad():
        model.blocks[0].mlp.W_in[:5] = 0  # pruned weights survive as exact zeros
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    loaded = SparseTransformer.from_pretrained(tmp_path / "ckpt")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 10))
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    assert loaded.cfg == model.cfg
    for name, mask in model.weight_masks().items():
        assert torch.equal(loaded.weight_masks()[name], mask)
    assert loaded.tokenizer.to_str() == model.tokenizer.to_str()


def test_saving_never_overwrites_silently(tmp_path, tiny_model):
    model = tiny_model
    model.save_pretrained(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, overwrite=True)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a circuitlab checkpoint"):
        SparseTransformer.from_pretrained(tmp_path / "nowhere")


def test_truncated_weights(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        SparseTransformer.from_pretrained(tmp_path)


def as_saved_before_configs_were_recorded(directory) -> None:
    """Rewrite the weights with the metadata of the shipped checkpoints: a format and a tokenizer hash only."""
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        metadata = {key: value for key, value in handle.metadata().items() if key != "config"}
        state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    save_file(state, directory / "model.safetensors", metadata=metadata)


def test_the_shipped_checkpoints_record_the_config_they_were_made_with():
    for name in ("sparse", "dense"):
        with safe_open(CHECKPOINTS_DIR / name / "model.safetensors", framework="pt") as handle:
            recorded = json.loads(handle.metadata()["config"])
        model = SparseTransformer.from_pretrained(CHECKPOINTS_DIR / name)
        assert recorded == json.loads((CHECKPOINTS_DIR / name / "config.json").read_text())
        assert model.tokenizer.get_vocab_size() <= model.cfg.d_vocab


def test_a_checkpoint_saved_before_configs_were_recorded_still_loads(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    as_saved_before_configs_were_recorded(tmp_path)
    loaded = SparseTransformer.from_pretrained(tmp_path)
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 8))
    torch.testing.assert_close(loaded(tokens), tiny_model(tokens))


def test_a_config_from_another_model_is_refused_by_name(tmp_path, tiny_config):
    model = SparseTransformer(dataclasses.replace(tiny_config, weight_l0=0.5))
    model.save_pretrained(tmp_path)
    dense = SparseTransformerConfig.dense_twin(model.cfg)  # same shapes: only the metadata can tell
    (tmp_path / "config.json").write_text(json.dumps(dense.to_dict()))
    message = (
        rf"{tmp_path}/config.json does not belong to {tmp_path}/model.safetensors: the weights were saved with "
        r"afrac=0.25 where config.json has None; weight_l0=0.5 where config.json has 1.0. Put back the config.json"
    )
    with pytest.raises(CheckpointError, match=message):
        SparseTransformer.from_pretrained(tmp_path)


def test_a_tokenizer_from_another_model_is_refused_by_name(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    foreign = Tokenizer(models.WordLevel({f"w{i}": i for i in range(tiny_model.cfg.d_vocab)}, unk_token="w0"))
    (tmp_path / "tokenizer.json").write_text(foreign.to_str())
    with pytest.raises(CheckpointError, match=rf"{tmp_path}/tokenizer.json does not belong to .*model.safetensors"):
        SparseTransformer.from_pretrained(tmp_path)
    as_saved_before_configs_were_recorded(tmp_path)  # the tokenizer hash was recorded from the start
    with pytest.raises(CheckpointError, match="tokenizer.json does not belong"):
        SparseTransformer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()  # no silent fallback to the project's tokenizer
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json is missing: .* is not a circuitlab checkpoint"):
        SparseTransformer.from_pretrained(tmp_path)


def test_weights_with_nan_are_refused(tmp_path, tiny_model):
    model = tiny_model
    with torch.no_grad():
        model.blocks[0].mlp.W_out[0, 0] = float("nan")
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds NaN or inf values in \['blocks.0.mlp.W_out'\]"):
        SparseTransformer.from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    as_saved_before_configs_were_recorded(tmp_path)  # then the tensors' names and shapes are the check
    config = json.loads((tmp_path / "config.json").read_text())
    config["attn_sink"] = False  # a sink-trained model loaded without sinks would be silently wrong
    (tmp_path / "config.json").write_text(json.dumps(config))
    sinks = r"\['blocks.0.attn.sink_logits', 'blocks.1.attn.sink_logits'\]"
    with pytest.raises(ValueError, match=rf"unexpected tensors {sinks}"):
        SparseTransformer.from_pretrained(tmp_path)
    config["attn_sink"], config["d_mlp"] = True, 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatches blocks.0.mlp.W_in"):
        SparseTransformer.from_pretrained(tmp_path)


def test_config_from_a_newer_format_or_corrupt_json(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 7}))
    with pytest.raises(ValueError, match="newer than this circuitlab"):
        SparseTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        SparseTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "d_model": "wide"}))
    with pytest.raises(ValueError, match=r"config.json: Invalid SparseTransformerConfig: d_model='wide' is not"):
        SparseTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "afrac": "1e-1"}))
    with pytest.raises(CheckpointError, match=r"saved with afrac=0.25 where config.json has 0.1"):
        SparseTransformer.from_pretrained(tmp_path)  # read as a number, then refused as another model's


# ------------------------------------------------------------------------------------------ atomic writes


def test_a_crash_while_writing_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    write_text_atomic(path, "step\n1\n2\n")

    def crash(*args):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", crash)  # killed after writing aside, before the rename
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "step\n")
    assert path.read_text() == "step\n1\n2\n"
    monkeypatch.undo()
    write_text_atomic(path, "step\n1\n")  # the next write replaces the leftover temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


# ------------------------------------------------------------------------------------------ training states


Trained = Callable[[int], tuple[SparseTransformer, torch.optim.Optimizer]]


@pytest.fixture(scope="module")
def trained(tiny_config) -> Trained:
    """`trained(step)`: a tiny model and its Adam after `step` steps, with weights that tell the steps apart
    (cached, so read only)."""

    @functools.cache
    def after(step: int) -> tuple[SparseTransformer, torch.optim.Optimizer]:
        model = SparseTransformer(tiny_config)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(step):
            model(torch.arange(8)[None], return_type="loss").backward()
            optimizer.step()
            optimizer.zero_grad()
        return model, optimizer

    return after


def assert_resumes_at(run, step: int, trained: Trained) -> None:
    found = find_training_state(run)
    assert found is not None and found[1] == step
    expected, _ = trained(step)
    model = SparseTransformer(expected.cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert load_training_state(found[0], model, optimizer) == step
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


class Killed(BaseException):
    """A kill: nothing after it runs (BaseException, so no `except Exception` can swallow it)."""


def kill_at(monkeypatch, point: int) -> list[str]:
    """Make the `point`-th file-system step of `circuitlab.checkpoint` (writing a file, fsync, rename, deleting
    a folder) kill the process; returns the steps taken, as "name first-argument". A kill inside a folder
    deletion deletes one file of it first."""
    steps = []

    def step(name, original, partial=None):
        def wrapper(*args, **kwargs):
            steps.append(f"{name} {args[0]}")
            if len(steps) == point:
                if partial:
                    partial(*args)
                raise Killed(name)
            return original(*args, **kwargs)

        return wrapper

    def delete_one_file(path, *args):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        if files:
            files[0].unlink()

    monkeypatch.setattr(checkpoint, "save_file", step("save_file", checkpoint.save_file))
    monkeypatch.setattr(checkpoint, "fsync", step("fsync", checkpoint.fsync))
    monkeypatch.setattr(checkpoint.os, "replace", step("replace", os.replace))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", step("rmtree", shutil.rmtree, delete_one_file))
    monkeypatch.setattr(checkpoint.Path, "write_text", step("write_text", checkpoint.Path.write_text))
    return steps


def test_a_kill_at_any_point_of_a_save_keeps_a_complete_state(tmp_path, monkeypatch, trained):
    original = tmp_path / "original"
    save_training_state(original, *trained(5), step=5)
    point = 0
    while True:
        point += 1
        run = tmp_path / f"killed_at_{point}"
        shutil.copytree(original, run)
        steps = kill_at(monkeypatch, point)
        try:
            save_training_state(run, *trained(10), step=10)
        except Killed:
            killed = True
        else:
            killed = False
        monkeypatch.undo()
        if not killed:
            break
        found = find_training_state(run)
        assert found is not None, f"no complete state after a kill at {steps[-1]}"
        manifest_written = f"replace {run}/checkpoints/step-0000010.tmp/.trainer_state.json.tmp" in steps[:-1]
        assert found[1] == (10 if manifest_written else 5), steps[-1]  # the newest complete one, wherever it is
        assert_resumes_at(run, found[1], trained)
        save_training_state(run, *trained(15), step=15)  # a later save cleans up whatever the kill left
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000015"]
        assert_resumes_at(run, 15, trained)
    assert point > 20 and steps[-1] == f"rmtree {run}/checkpoints/step-0000005"  # every step was a kill point
    assert_resumes_at(run, 10, trained)


def test_a_state_left_by_the_earlier_trainer_is_found(tmp_path, trained):
    """The earlier trainer deleted checkpoint/ before renaming checkpoint.tmp/: a kill between left only that."""
    save_training_state(tmp_path, *trained(5), step=5)
    (tmp_path / "checkpoints" / "step-0000005").rename(tmp_path / "checkpoint.tmp")
    (tmp_path / "checkpoints").rmdir()
    (tmp_path / "checkpoint.tmp" / "trainer_state.json").write_text('{"step": 5}\n')  # no hashes back then
    assert find_training_state(tmp_path) == (tmp_path / "checkpoint.tmp", 5)
    assert_resumes_at(tmp_path, 5, trained)
    (tmp_path / "checkpoint.tmp" / "optimizer.safetensors").unlink()
    assert find_training_state(tmp_path) is None


def test_a_damaged_state_is_passed_over_for_an_older_complete_one(tmp_path, trained):
    save_training_state(tmp_path, *trained(5), step=5)
    newer = tmp_path / "checkpoints" / "step-0000010.tmp"
    shutil.copytree(tmp_path / "checkpoints" / "step-0000005", newer)
    (newer / "trainer_state.json").write_text((newer / "trainer_state.json").read_text().replace('": 5', '": 10'))
    weights = newer / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated: its hash no longer matches
    assert find_training_state(tmp_path) == (tmp_path / "checkpoints" / "step-0000005", 5)
