"""Wall time and pruning steps per task on the shipped sparse model (2 threads); one JSON line.

Usage: python benchmarks/prune_speed.py [--model data/checkpoints/sparse] [--tasks a b ...]
Target: at most 60 s per task including the bisection.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuitlab import SparseTransformer, prune, tasks
from circuitlab.paths import CHECKPOINTS_DIR
from circuitlab.prune import PruneConfig, sample_pretraining_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(CHECKPOINTS_DIR / "sparse"), help="checkpoint folder")
    case_studies = ["single_double_quote", "bracket_counting", "set_or_string_one_var"]  # the forms the model solves
    parser.add_argument("--tasks", nargs="*", default=case_studies)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SparseTransformer.from_pretrained(args.model)
    start = time.perf_counter()
    pretraining_tokens = sample_pretraining_tokens(model, PruneConfig().mean_batches * 16, seed=0)
    report = {
        "benchmark": "prune_speed",
        "threads": args.threads,
        "model": Path(args.model).name,
        "mean_ablation_setup_s": round(time.perf_counter() - start, 1),
        "steps": PruneConfig().steps,
        "tasks": {},
    }
    for name in args.tasks:
        start = time.perf_counter()
        circuit = prune(model, tasks.get(name), pretraining_tokens=pretraining_tokens, progress=False)
        report["tasks"][name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "nodes": circuit.n_nodes,
            "edges": circuit.n_edges,
            "task_loss": round(circuit.task_loss, 4),
        }
    report["max_seconds"] = max(t["seconds"] for t in report["tasks"].values())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
