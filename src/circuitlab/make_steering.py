"""The command that makes `data/steering/`: steer the dense model through each bridged circuit's best node.

    python -m circuitlab.make_steering --pair data/bridges --circuits data/circuits/bridged --out data/steering

For each circuit folder under `--circuits` (pruned on the bridged sparse model of `--pair`), `steering.steer_task`
ranks the circuit's residual nodes on the pruning run's selection pairs and measures the best node's curve on its
test pairs; `channel_ranking` carries the same edit along every channel at the node's site; `channel_spread`
measures, on the same test pairs, how many channels the contrast is spread over. Each task's folder in `--out` gets
`nodes.csv`, `curve.csv`, `curve.json`, `channels.csv` and `spread.csv`, which chapter 07 loads. Resumable: a
task whose folder is complete is skipped unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuitlab.bridges import load_bridged_pair
from circuitlab.checkpoint import CheckpointError, write_text_atomic
from circuitlab.circuit import Circuit, Node
from circuitlab.prune import PrunePairs
from circuitlab.steering import (
    CHANNELS_FILE,
    channel_ranking,
    channel_spread,
    load_steering,
    save_steering,
    steer_task,
)

SPREAD_FILE = "spread.csv"


def make_steering(pair_dir: Path, circuits_dir: Path, out: Path, overwrite: bool = False) -> list[str]:
    """Steer through every circuit in `circuits_dir`; returns the tasks it measured (skipping finished ones)."""
    pair = load_bridged_pair(pair_dir)
    folders = sorted(folder for folder in circuits_dir.iterdir() if (folder / "circuit.json").is_file())
    if not folders:
        raise FileNotFoundError(f"{circuits_dir} holds no circuit folder (one with circuit.json)")
    done = []
    for folder in folders:
        target = out / folder.name
        if not overwrite and (target / SPREAD_FILE).is_file():
            load_steering(target)  # a finished folder must also read back
            continue
        started = time.perf_counter()
        circuit = Circuit.load(folder, pair.sparse)
        pairs = PrunePairs.of_circuit(circuit, pair.sparse)
        effects, curve = steer_task(pair, circuit, pairs)
        save_steering(target, effects, curve)
        channels = channel_ranking(pair, Node.parse(curve.attrs["node"]), circuit, pairs.test)
        write_text_atomic(target / CHANNELS_FILE, channels.to_csv())
        spread = channel_spread(pair.sparse, pairs.test)
        write_text_atomic(target / SPREAD_FILE, spread.round(4).to_csv())  # last: marks the folder complete
        print(json.dumps({"task": folder.name, "seconds": round(time.perf_counter() - started)}), flush=True)
        done.append(folder.name)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="data/bridges", help="bridged pair folder (circuitlab.make_bridges)")
    parser.add_argument("--circuits", default="data/circuits/bridged", help="circuits pruned on the pair's model")
    parser.add_argument("--out", default="data/steering", help="folder to write one folder per task into")
    parser.add_argument("--overwrite", action="store_true", help="measure again tasks that are already done")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        make_steering(Path(args.pair), Path(args.circuits), Path(args.out), args.overwrite)
    except (CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"circuitlab.make_steering: error: {err}") from None


if __name__ == "__main__":
    main()
