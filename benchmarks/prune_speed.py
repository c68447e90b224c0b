"""Wall time of one default prune per task on the shipped sparse model, with the circuit it finds; one JSON line.

Per task: the whole prune, the mask training's share, the search and cleanup's share, and how many passes over
a whole pair set (selection or check, 800 prompts by default) the search and cleanup made.

Usage: python benchmarks/prune_speed.py [--model data/checkpoints/sparse] [--tasks a b ...] [--threads 2]
    [--set FIELD=VALUE ...]
Target: a single default prune (all five stages, no hyper-parameter search) in at most 90 s per task.
Run it alone on the machine: two jobs on two cores slow each other far more than twice. To compare a change,
run the baseline in the same sitting, e.g. `--set "probe_shares=[0.0625,0.125,0.25]"` for three probes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuitlab import SparseTransformer, prune, tasks
from circuitlab.paths import CHECKPOINTS_DIR
from circuitlab.prune import PruneConfig, mean_ablation_tokens
from circuitlab.settings import parse_overrides

SEARCH_FIELDS = ("seconds_masks", "seconds_search_and_cleanup", "passes", "trials_stopped_early")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(CHECKPOINTS_DIR / "sparse"), help="checkpoint folder")
    parser.add_argument(
        "--tasks", nargs="*", default=["single_double_quote", "bracket_counting", "set_or_string_one_var"]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="PruneConfig overrides")
    args = parser.parse_args()
    overrides = parse_overrides(PruneConfig, args.set)
    torch.set_num_threads(args.threads)
    model = SparseTransformer.from_pretrained(args.model)
    start = time.perf_counter()
    pretraining_tokens = mean_ablation_tokens(model)
    report = {
        "benchmark": "prune_speed",
        "threads": args.threads,
        "model": Path(args.model).name,
        "mean_ablation_setup_s": round(time.perf_counter() - start, 1),
        "steps": PruneConfig(**overrides).steps,
        "overrides": args.set,
        "tasks": {},
    }
    for name in args.tasks:
        start = time.perf_counter()
        circuit = prune(model, tasks.get(name), pretraining_tokens=pretraining_tokens, progress=False, **overrides)
        report["tasks"][name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "nodes": circuit.n_nodes,
            "edges": circuit.n_edges,
            "test_loss": round(circuit.task_loss, 4),
            **{key: circuit.search.get(key) for key in SEARCH_FIELDS},
        }
    report["max_seconds"] = max(t["seconds"] for t in report["tasks"].values())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
