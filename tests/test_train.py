"""The trainer: it learns, it sparsifies, it resumes exactly, it protects outputs, it runs under torchrun."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from circuitlab import SparseTransformer
from circuitlab.corpus import TokenSampler
from circuitlab.train import TrainConfig, load_config, train

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
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 5
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


def test_an_existing_output_folder_is_never_overwritten_silently(tmp_path):
    model_cfg, cfg = tiny(tmp_path, steps=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(model_cfg, cfg, progress=False)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: 2\ntrain:\n  step: 10\n")
    with pytest.raises(ValueError, match=r"Unknown TrainConfig field\(s\) \['step'\].*'steps'"):
        load_config(bad)
    with pytest.raises(ValueError, match="section.field=value"):
        load_config(TINY, ["steps=3"])
    with pytest.raises(ValueError, match="unknown section"):
        bad.write_text("optimizer: {}\n")
        load_config(bad)
    assert TrainConfig.from_dict({"betas": [0.8, 0.9]}).betas == (0.8, 0.9)


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
