"""Wall time of the whole per-task hyper-parameter search on the shipped sparse model (trials run in worker
processes, one thread each); one JSON line.

Usage: python benchmarks/search_budget.py [--model data/checkpoints/sparse] [--tasks a b ...] [--budget 480]
       [--workers 2] [--set FIELD=VALUE ...]
Target: at most 600 s per task on 2 cores, search included.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuitlab import settings
from circuitlab.paths import CHECKPOINTS_DIR
from circuitlab.prune import PruneConfig
from circuitlab.search import search

TARGET_S = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(CHECKPOINTS_DIR / "sparse"), help="checkpoint folder")
    parser.add_argument("--tasks", nargs="*", default=["single_double_quote", "bracket_counting"])
    parser.add_argument("--budget", type=float, default=480.0, help="search seconds per task")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    base = PruneConfig(**settings.parse_overrides(PruneConfig, args.set))
    report = {
        "benchmark": "search_budget",
        "model": Path(args.model).name,
        "budget_s": args.budget,
        "workers": args.workers,
        "overrides": args.set,
        "tasks": {},
    }
    for name in args.tasks:
        summary = search(args.model, name, args.budget, workers=args.workers, base=base, progress=False).summary()
        report["tasks"][name] = {key: value for key, value in summary.items() if key != "task"}
    report["max_seconds"] = max(task["seconds"] for task in report["tasks"].values())
    report["target_s"] = TARGET_S
    print(json.dumps(report))


if __name__ == "__main__":
    main()
