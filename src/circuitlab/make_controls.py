"""The command that makes `data/controls/`: the controls and the attribution baseline for one task's shipped
circuit, as two CSV tables that chapter 02 reads.

    python -m circuitlab.make_controls --model data/checkpoints/sparse \\
        --circuit data/circuits/sparse/single_double_quote --out data/controls/sparse

`controls.csv`: `controls.control_table` of `controls.run_controls`, the shipped circuit standing for the
method's run (so only zero ablation, the random model and the nonsense task are pruned here).
`edges_vs_loss.csv`: `controls.edges_vs_loss` on the shipped circuit's run (the paper's Figure 31). Each table is
written when it is complete, and one that exists is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuitlab import controls, tasks
from circuitlab.checkpoint import write_text_atomic
from circuitlab.circuit import Circuit
from circuitlab.model import SparseTransformer
from circuitlab.prune import PrunePairs

TARGET_LOSSES = (0.3, 0.15, 0.08, 0.04)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder, e.g. data/checkpoints/sparse")
    parser.add_argument("--circuit", required=True, help="a circuit pruned on --model, e.g. data/circuits/sparse/X")
    parser.add_argument("--out", required=True, help="folder for controls.csv and edges_vs_loss.csv (data/controls/X)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = SparseTransformer.from_pretrained(args.model)
    circuit = Circuit.load(args.circuit, model)  # with the model: a circuit of another model is refused
    task, out = tasks.get(circuit.task_name), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "controls.csv").exists():
        start = time.perf_counter()
        table = controls.control_table(controls.run_controls(model, task, method=circuit))
        write_text_atomic(out / "controls.csv", table.rename_axis("control").to_csv())
        print(json.dumps({"table": "controls", "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    if not (out / "edges_vs_loss.csv").exists():
        start = time.perf_counter()
        pairs = PrunePairs.of_circuit(circuit, model)
        table = controls.edges_vs_loss(model, circuit, pairs, TARGET_LOSSES)
        write_text_atomic(out / "edges_vs_loss.csv", table.to_csv(index=False))
        print(json.dumps({"table": "edges_vs_loss", "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
