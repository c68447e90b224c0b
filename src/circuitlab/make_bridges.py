"""The command that makes `data/bridges/`: a weight-sparse model trained beside bridges to the frozen dense model.

    python -m circuitlab.make_bridges --config configs/bridges.yaml --out data/bridges [--resume] [--set train.steps=10]

The config has `model:` and `train:` sections (as `circuitlab.train`) and a `bridges:` section
(`circuitlab.bridges.BridgeConfig`: the dense checkpoint and the loss weights). The run is `circuitlab.train.train`
with a `BridgeObjective`, so it logs, checkpoints, resumes (`--resume`) and stops on NaN like every training
run; the bridges start at their least-squares fit between the two models. At the end the folder holds the
sparse checkpoint, `bridges.safetensors` + `bridges.json`, and `bridge_report.csv` (per-site NMSE and
hybrid-pass KL on held-out batches).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from circuitlab import bridges as bridges_module
from circuitlab.bridges import BridgeConfig, BridgedPair, BridgeObjective, bridge_report, fit_bridges
from circuitlab.checkpoint import CheckpointError, write_text_atomic
from circuitlab.config import SparseTransformerConfig
from circuitlab.corpus import TokenSampler, load_token_streams
from circuitlab.model import SparseTransformer
from circuitlab.settings import SettingsError
from circuitlab.train import VAL_SEED, TrainConfig, TrainingDiverged, initial_model, load_sections, run_parser, train

SECTIONS = {"model": SparseTransformerConfig, "train": TrainConfig, "bridges": BridgeConfig}
REPORT_BATCHES = 4  # held-out batches (of train.batch_size rows) that bridge_report.csv averages over


def make_bridges(
    model_cfg: SparseTransformerConfig, cfg: TrainConfig, bridge_cfg: BridgeConfig, progress: bool = True
) -> BridgedPair:
    """Train the sparse model and its bridges into `cfg.out_dir`, save the bridges and their report."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dense = SparseTransformer.from_pretrained(bridge_cfg.dense).eval()
    val = TokenSampler(
        load_token_streams(), "val", model_cfg.n_ctx, cfg.synthetic_fraction, VAL_SEED, cfg.synthetic_mix
    )
    fit_tokens = [val.batch(1000 + i, cfg.batch_size) for i in range(bridge_cfg.fit_batches)]
    bridges = fit_bridges(dense, initial_model(model_cfg, cfg).eval(), fit_tokens)  # a resumed run loads its own
    sparse = train(model_cfg, cfg, progress, objective=BridgeObjective(dense, bridges, bridge_cfg)).eval()
    out_dir = Path(cfg.out_dir)
    bridges.save(out_dir, dense_dir=bridge_cfg.dense, sparse_dir=out_dir)
    pair = BridgedPair(dense, sparse, bridges.eval())
    tokens = torch.cat([val.batch(i, cfg.batch_size) for i in range(REPORT_BATCHES)])
    report = bridge_report(pair, tokens)
    write_text_atomic(out_dir / bridges_module.REPORT_FILE, report.round(4).to_csv())
    return pair


def main(argv: list[str] | None = None) -> None:
    parser = run_parser(__doc__.splitlines()[0], "model:, train: and bridges:")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        loaded = load_sections(args.config, SECTIONS, args.set)
        cfg = dataclasses.replace(
            loaded["train"],
            out_dir=args.out or loaded["train"].out_dir,
            resume=args.resume or loaded["train"].resume,
            overwrite=args.overwrite or loaded["train"].overwrite,
        )
        make_bridges(loaded["model"], cfg, loaded["bridges"], progress=not args.no_progress)
    except (SettingsError, CheckpointError, FileExistsError, FileNotFoundError, TrainingDiverged) as err:
        raise SystemExit(f"circuitlab.make_bridges: error: {err}") from None
    print(json.dumps({"out": cfg.out_dir, "seconds": round(time.perf_counter() - started)}), flush=True)


if __name__ == "__main__":
    main()
