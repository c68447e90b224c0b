"""The trainer: it learns, it sparsifies, it resumes exactly, it protects outputs, it runs under torchrun."""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from circuitlab import SparseTransformer, checkpoint
from circuitlab.checkpoint import find_training_state
from circuitlab.corpus import TokenSampler
from circuitlab.settings import SettingsError
from circuitlab.synthetic import MIXES
from circuitlab.train import (
    RUN_MARKER,
    TrainConfig,
    check_same_trajectory,
    load_config,
    main,
    schedule_table,
    train,
    write_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def tiny(tmp_path: Path, **changes) -> tuple:
    model_cfg, cfg = load_config(TINY, ["model.n_ctx=16", "train.batch_size=4", "train.threads=1"])
    return model_cfg, dataclasses.replace(cfg, out_dir=str(tmp_path / "run"), **changes)


def test_training_learns_and_sparsifies(tmp_path):
    model_cfg, cfg = tiny(tmp_path, steps=24, eval_every=23, log_every=1)
    model = train(model_cfg, cfg, progress=False)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    evaluated = metrics.dropna(subset=["val_loss"])
    assert evaluated.val_loss.iloc[-1] < evaluated.val_loss.iloc[0] - 0.5
    assert list(metrics.step) == list(range(1, 25))
    followed = schedule_table(model_cfg, cfg)  # what chapter 01 plots is the schedule the run logged
    assert list(followed.step) == list(metrics.step)
    assert list(metrics.l0) == pytest.approx(list(followed.l0), abs=1e-5)  # logged rounded to 5 decimals
    assert list(metrics.lr) == pytest.approx(list(followed.lr), rel=1e-3)  # and to 4 significant digits
    assert followed.l0.iloc[0] == 1 and followed.l0.iloc[-1] == model_cfg.weight_l0
    for name, (param, _) in model.weight_matrices().items():
        density = (param != 0).float().mean().item()
        limit = model_cfg.embed_l0 if name in ("embed.W_E", "unembed.W_U") else model_cfg.weight_l0
        assert density <= limit + 4 / min(param.shape) + 1e-6, name
    saved = SparseTransformer.from_pretrained(tmp_path / "run")
    tokens = torch.randint(0, 1024, (2, 16))
    torch.testing.assert_close(saved(tokens), model(tokens))


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    model_cfg, cfg = tiny(tmp_path, steps=12, checkpoint_every=5, log_every=1, eval_every=4)
    straight = train(model_cfg, dataclasses.replace(cfg, out_dir=str(tmp_path / "straight")), progress=False)

    original_batch = TokenSampler.batch

    def crash_at_step_8(self, step, batch_size):
        if step == 8 and self.synthetic_fraction == cfg.synthetic_fraction and batch_size == cfg.batch_size:
            raise KeyboardInterrupt("simulated crash")
        return original_batch(self, step, batch_size)

    monkeypatch.setattr(TokenSampler, "batch", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(model_cfg, cfg, progress=False)
    monkeypatch.setattr(TokenSampler, "batch", original_batch)
    assert find_training_state(tmp_path / "run") == (tmp_path / "run" / "checkpoints" / "step-0000005", 5)
    resumed = train(model_cfg, dataclasses.replace(cfg, resume=True), progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    columns = ["step", "train_loss", "val_loss", "l0", "nonzero_params", "dead_neurons", "lr"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "run" / "metrics.csv")[columns],
        pd.read_csv(tmp_path / "straight" / "metrics.csv")[columns],
    )
    with pytest.raises(ValueError, match=r"steps: 12 -> 20"):
        train(model_cfg, dataclasses.replace(cfg, resume=True, steps=20), progress=False)


def test_a_kill_between_writing_and_renaming_a_checkpoint_loses_nothing(tmp_path, monkeypatch, capsys):
    """The earlier trainer deleted checkpoint/ before renaming checkpoint.tmp/; a kill between restarted at 0."""
    model_cfg, cfg = tiny(tmp_path, steps=12, checkpoint_every=5, log_every=1, eval_every=4)
    straight = train(model_cfg, dataclasses.replace(cfg, out_dir=str(tmp_path / "straight")), progress=False)

    def killed_renaming_step_10(source, target):
        if str(source).endswith("step-0000010.tmp"):
            raise KeyboardInterrupt("killed")
        os.rename(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", killed_renaming_step_10)
    with pytest.raises(KeyboardInterrupt):
        train(model_cfg, cfg, progress=False)
    monkeypatch.undo()
    capsys.readouterr()
    resumed = train(model_cfg, dataclasses.replace(cfg, resume=True), progress=False)
    assert f"Resuming {tmp_path / 'run'} from step 10" in capsys.readouterr().out
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    columns = ["step", "train_loss", "val_loss", "l0", "nonzero_params", "dead_neurons", "lr"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "run" / "metrics.csv")[columns],
        pd.read_csv(tmp_path / "straight" / "metrics.csv")[columns],
    )
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000012"]


def test_resuming_without_a_checkpoint_says_so(tmp_path, capsys):
    model_cfg, cfg = tiny(tmp_path, steps=2, resume=True)
    train(model_cfg, cfg, progress=False)
    assert "holds no complete checkpoint to resume: starting at step 0" in capsys.readouterr().out
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no circuitlab run to resume"):
        train(model_cfg, dataclasses.replace(cfg, out_dir=str(tmp_path / "elsewhere")), progress=False)


def test_a_killed_metrics_rewrite_keeps_the_history(tmp_path, monkeypatch):
    rows = [{"step": step, "train_loss": 1.0} for step in (1, 2)]
    write_metrics(tmp_path / "metrics.csv", rows)

    def killed(*args):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(checkpoint, "fsync", killed)  # the new table is written aside, not yet renamed
    with pytest.raises(KeyboardInterrupt):
        write_metrics(tmp_path / "metrics.csv", [*rows, {"step": 3, "train_loss": 0.5}])
    assert list(pd.read_csv(tmp_path / "metrics.csv").step) == [1, 2]


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    overrides = ["model.n_ctx=16", "train.batch_size=4", "train.threads=1", "train.steps=12"]
    overrides += ["train.lr=1e8", "train.weight_decay=0", "train.checkpoint_every=1", "train.log_every=1"]
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY), "--out", str(run), "--no-progress", "--set", *overrides])
    message = str(exit_info.value.code)
    diverged = int(re.search(r"Training diverged at step (\d+): the loss is .* gradients' RMS (nan|inf)", message)[1])
    path, step = find_training_state(run)
    assert step == diverged - 1 and f"the last good checkpoint, {path} (step {step}), is kept" in message
    assert "Lower train.lr (now 1e+08)" in message
    SparseTransformer.from_pretrained(path)  # loads: no NaN or inf in it
    assert not (run / "model.safetensors").exists()  # the run did not finish, so no final model
    assert all(math.isfinite(loss) for loss in pd.read_csv(run / "metrics.csv").train_loss)


def test_overwrite_replaces_only_what_the_trainer_wrote(tmp_path):
    model_cfg, cfg = tiny(tmp_path, steps=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(model_cfg, cfg, progress=False)
    with pytest.raises(FileExistsError, match=rf"{run} was not written by circuitlab.train \(it has no {RUN_MARKER}\)"):
        train(model_cfg, dataclasses.replace(cfg, overwrite=True), progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    (run / "notes.txt").unlink()
    train(model_cfg, cfg, progress=False)
    (run / "notes.txt").write_text("mine")
    (run / ".metrics.csv.tmp").write_text("left by a kill")
    train(model_cfg, dataclasses.replace(cfg, overwrite=True, steps=3), progress=False)
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / ".metrics.csv.tmp").exists()
    assert list(pd.read_csv(run / "metrics.csv").step) == [1, 3]
    train(model_cfg, dataclasses.replace(cfg, overwrite=True, steps=2), progress=False)  # and again: still a run
    assert (run / RUN_MARKER).is_file() and list(pd.read_csv(run / "metrics.csv").step) == [1, 2]


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: 2\ntrain:\n  step: 10\n")
    with pytest.raises(SettingsError, match=rf"{bad}, train: unknown TrainConfig field\(s\) \['step'\].*steps"):
        load_config(bad)
    with pytest.raises(SettingsError, match="section.field=value"):
        load_config(TINY, ["steps=3"])
    with pytest.raises(SettingsError, match="unknown section"):
        bad.write_text("optimizer: {}\n")
        load_config(bad)
    assert TrainConfig(betas=[0.8, 0.9], lr="1e-3") == TrainConfig(betas=(0.8, 0.9), lr=0.001)
    bad.write_text("train:\n  lr: 1e-3\n  steps: 1e3\n")  # PyYAML reads both as text
    assert load_config(bad)[1].lr == 0.001 and load_config(bad)[1].steps == 1000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"bad.yaml is empty"),
        ("[model, train]\n", r"bad.yaml holds a list"),
        ("train: 5\n", r"bad.yaml, train: expected a mapping of TrainConfig fields"),
        ("train:\n  steps: 0\n", r"train: Invalid TrainConfig: steps=0 must be at least 1"),
        ("train:\n  steps: -5\n", r"steps=-5 must be at least 1"),
        ("train:\n  steps: 2.5\n", r"steps=2.5 is not a whole number"),
        ("train:\n  batch_size: 0\n", r"batch_size=0 must be at least 1"),
        ("train:\n  eval_every: 0\n", r"eval_every=0 must be at least 1"),
        ("train:\n  lr: abc\n", r"lr='abc' is not a finite number: write it like 0.01 or 1e-2"),
        ("train:\n  lr: .nan\n", r"lr=nan is not a finite number"),
        ("train:\n  l0_start_frac: 0.6\n  l0_end_frac: 0.1\n", r"l0_start_frac=0.6 must not exceed l0_end_frac=0.1"),
        ("train:\n  l0_end_frac: 1.5\n", r"l0_end_frac=1.5 must be in \[0, 1\]"),
        ("train:\n  betas: [0.9, 1.2]\n", r"betas=\(0.9, 1.2\) must each be in \[0, 1\)"),
        ("train:\n  betas: 0.9\n", r"betas=0.9 is not a list"),
        ("train:\n  resume: maybe\n", r"resume='maybe' is not a boolean"),
        ("train:\n  device: tpu\n", r"device='tpu' must be one of \('cpu', 'cuda'\)"),
        ("train:\n  synthetic_mix: html\n", r"synthetic_mix='html' must be one of \('templates', 'python', 'python_"),
        ("train:\n  threads: 0\n", r"threads=0 must be at least 1"),
        ("train:\n  lr: 20\n", r"weight_decay \* lr = 2 must be below 1"),
        ("model:\n  afrac: 2\n", r"bad.yaml, model: Invalid SparseTransformerConfig: afrac=2.0 must be in \(0, 1\]"),
        ("model:\n  d_model: 0\n  n_layers: x\n", r"n_layers='x' is not a whole number"),
    ],
)
def test_each_bad_config_value_is_named_with_its_file(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_config(bad)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=abc", r"--set train.lr=abc: lr='abc' is not a finite number"),
        ("train.overwrite=maybe", r"--set train.overwrite=maybe: overwrite='maybe' is not a boolean"),
        ("train.stepz=3", r"--set train.stepz=3: unknown TrainConfig field\(s\) \['stepz'\]. Valid fields: steps"),
        ("train.steps=0", r"tiny.yaml, train --set train.steps=0: Invalid TrainConfig: steps=0 must be at least 1"),
        ("model.d_model", r"--set 'model.d_model': write model.FIELD=VALUE"),
    ],
)
def test_each_bad_override_is_named(override, message):
    with pytest.raises(SettingsError, match=message):
        load_config(TINY, [override])


STREAM_SOURCES = ("real", *MIXES)


def test_the_sampler_draws_synthetic_rows_from_its_mix_and_refuses_an_unknown_one():
    streams = {f"{source}/train": np.full(500, value, dtype=np.uint16) for value, source in enumerate(STREAM_SOURCES)}
    for value, mix in enumerate(STREAM_SOURCES[1:], start=1):
        rows = TokenSampler(streams, "train", 16, synthetic_fraction=0.5, seed=0, mix=mix).batch(0, 64)
        assert set(rows.unique().tolist()) == {0, value}  # real code and this mix's stream, nothing else
    with pytest.raises(ValueError, match=r"no synthetic mix 'html'; the streams hold \['python/train'"):
        TokenSampler(streams, "train", 16, synthetic_fraction=0.5, seed=0, mix="html")


def test_repeated_rows_copy_their_first_half_and_leave_the_other_rows_alone():
    streams = {f"{source}/train": np.arange(5000, dtype=np.uint16) % 997 for source in STREAM_SOURCES}
    plain = TokenSampler(streams, "train", 16, synthetic_fraction=0.5, seed=3, mix="python").batch(7, 64)
    mixed = TokenSampler(streams, "train", 16, 0.5, seed=3, mix="python", repeat_fraction=0.5).batch(7, 64)
    repeated = (mixed[:, 8:] == mixed[:, :8]).all(dim=1)
    assert 16 < repeated.sum() < 48  # about half the rows
    assert torch.equal(mixed[~repeated], plain[~repeated])  # the same windows, untouched
    assert torch.equal(mixed[:, :8], plain[:, :8])  # a repeated row starts with the window it would have had
    with pytest.raises(ValueError, match="repeat_fraction must be in"):
        TokenSampler(streams, "train", 16, 0.5, seed=0, mix="python", repeat_fraction=1.5)


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
    saved = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
    del saved["repeat_fraction"]  # as written before the setting existed
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(saved))
    check_same_trajectory(path, TrainConfig())  # the run had the default
    with pytest.raises(ValueError, match=r"repeat_fraction: 0.0 -> 0.2"):
        check_same_trajectory(path, TrainConfig(repeat_fraction=0.2))


def test_the_command_line_reports_errors_without_a_traceback_and_leaves_no_files(tmp_path):
    run = tmp_path / "run"
    for overrides in (["train.lr=abc"], ["model.d_vocab=100"]):  # the second fails on building the model
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", str(TINY), "--out", str(run), "--set", *overrides])
        assert str(exit_info.value.code).startswith("circuitlab.train: error: ")
        assert not run.exists()
    assert "model.d_vocab=100 is smaller than the tokenizer's vocabulary (1024)" in str(exit_info.value.code)


@pytest.mark.slow
def test_torchrun_ranks_agree_and_match_a_single_process(tmp_path):
    overrides = ["model.n_ctx=16", "train.batch_size=4", "train.steps=6", "train.threads=1", "train.eval_every=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["-m", "circuitlab.train", "--config", str(TINY), "--no-progress", "--set", *overrides]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *command,
            "--out",
            str(tmp_path / "ddp"),
        ],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    subprocess.run([sys.executable, *command, "--out", str(tmp_path / "single")], check=True, env=env, cwd=ROOT)
    ranks = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    ddp = SparseTransformer.from_pretrained(tmp_path / "ddp").state_dict()
    single = SparseTransformer.from_pretrained(tmp_path / "single").state_dict()
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)


PAGE_FAULTS_OF_TEN_TENSORS = """
import resource, sys, torch
from circuitlab.train import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)  # 64 MiB, made and freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_in_new_ones():
    def page_faults(mode: str) -> int:
        command = [sys.executable, "-c", PAGE_FAULTS_OF_TEN_TENSORS, mode]
        return int(subprocess.run(command, check=True, capture_output=True, text=True).stdout)

    pages_per_tensor = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert page_faults("default") >= 9 * pages_per_tensor  # each tensor gets fresh pages
    assert page_faults("keep") <= 2 * pages_per_tensor
