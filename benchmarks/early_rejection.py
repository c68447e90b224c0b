"""How often early rejection stops a trial that would have passed; one JSON line.

Replays the Figure 31 search (`controls.edges_vs_loss`: the learned and the attribution ranking at targets
0.3 to 0.04) and, with `--prune`, the circuit's whole pruning run, with every `MaskedEvaluator` auditing: each
trial stopped on a probe is also measured on the whole batch. A *false rejection* is a stopped trial whose
whole-batch loss is at or under the threshold it was stopped against. Reported per run: passes (not counting the
audit's), trials stopped, false rejections and the worst of them, and the circuits' sizes.

Usage: python benchmarks/early_rejection.py [--model data/checkpoints/sparse]
    [--circuit data/circuits/sparse/single_double_quote] [--targets 0.3 0.15 0.08 0.04] [--prune] [--threads 2]
    [--set FIELD=VALUE ...]
Target: no false rejection. Passes are the price of the rule (fewer is faster); compare a change with its
baseline in the same sitting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from unittest import mock

import torch

from circuitlab import SparseTransformer, controls, settings
from circuitlab.circuit import Circuit
from circuitlab.masks import MaskedEvaluator
from circuitlab.paths import CHECKPOINTS_DIR, CIRCUITS_DIR
from circuitlab.prune import PruneConfig, PrunePairs, prune


def audited(run) -> tuple[object, dict]:
    """Call `run()` with every evaluator auditing; its result and what the audits found."""
    evaluators: list[MaskedEvaluator] = []
    make_evaluator = PruneConfig.evaluator

    def recording(self, *args):
        evaluator = make_evaluator(self, *args)
        evaluators.append(evaluator)
        return evaluator

    with mock.patch.object(MaskedEvaluator, "audit", True), mock.patch.object(PruneConfig, "evaluator", recording):
        result = run()
    audits = [a for e in evaluators for a in e.audits]
    false = [a for a in audits if a["loss"] <= a["threshold"]]
    worst = max(false, key=lambda a: a["estimate"] - a["loss"], default=None)
    return result, {
        "passes": round(sum(e.passes for e in evaluators), 1),
        "stopped": len(audits),
        "false_rejections": len(false),
        "worst_false_rejection": worst and {k: round(v, 4) for k, v in worst.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(CHECKPOINTS_DIR / "sparse"), help="checkpoint folder")
    parser.add_argument("--circuit", default=str(CIRCUITS_DIR / "sparse" / "single_double_quote"))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.15, 0.08, 0.04])
    parser.add_argument("--prune", action="store_true", help="also replay the circuit's whole pruning run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="PruneConfig overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SparseTransformer.from_pretrained(args.model)
    circuit = Circuit.load(args.circuit, model)
    overrides = settings.parse_overrides(PruneConfig, args.set)
    circuit.config = dataclasses.asdict(dataclasses.replace(PruneConfig.of_circuit(circuit), **overrides))
    pairs = PrunePairs.of_circuit(circuit, model)
    report: dict = {"benchmark": "early_rejection", "circuit": Path(args.circuit).name, "overrides": args.set}
    table, report["edges_vs_loss"] = audited(lambda: controls.edges_vs_loss(model, circuit, pairs, args.targets))
    report["edges_vs_loss"]["sizes"] = {
        f"{row.method}@{row.target_loss}": [int(row.nodes), int(row.edges), round(row.test_loss, 4)]
        for row in table.itertuples()
    }
    if args.prune:
        cfg = PruneConfig.of_circuit(circuit)
        found, report["prune"] = audited(lambda: prune(model, pairs=pairs, cfg=cfg, progress=False))
        report["prune"]["sizes"] = [found.n_nodes, found.n_edges, round(found.task_loss, 4)]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
