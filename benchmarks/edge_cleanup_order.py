"""Does the order of the edge cleanup matter? A shipped circuit's edge cleanup rerun in other orders; one JSON line.

The pruner tries single weights between kept nodes smallest magnitude first (`prune.cleanup_edges`), and the
greedy removal keeps what the first removals leave necessary, so another order can end elsewhere. This takes a
shipped circuit's nodes, restores the edges its cleanup removed, and reruns that cleanup (same pairs, target and
rule, a budget large enough that every edge is tried) with the edges in each order:

* `weight`: smallest |weight| first, the pruner's order (it should give back the shipped edge count);
* `signal`: smallest |weight| times the mean absolute deviation of the source node from its ablation value on
  the selection prompts, i.e. the smallest signal the edge carries first;
* `random<N>`: a random order drawn with seed N.

Per order: the edges left, the test loss of the result, and the seconds taken.

Usage: python benchmarks/edge_cleanup_order.py [--circuit data/circuits/sparse_searched/bracket_counting]
    [--orders weight signal random1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from circuitlab import Circuit, SparseTransformer
from circuitlab.circuit import Edge, circuit_edges, edges_ablated
from circuitlab.model import NODE_LOCATIONS
from circuitlab.paths import CHECKPOINTS_DIR, CIRCUITS_DIR
from circuitlab.prune import PruneConfig, PrunePairs, cleanup_edges, frozen


def source_spread(model: SparseTransformer, circuit: Circuit, pairs: PrunePairs) -> dict[tuple, float]:
    """Mean |activation - ablation value| of every node over the selection prompts' real positions."""
    batch = pairs.selection
    _, cache = model.run_with_cache(batch.tokens, names_filter=lambda name: name in circuit.ablation_values)
    valid = (torch.arange(batch.tokens.shape[1])[None] <= batch.last[:, None]).float()
    spread = {}
    for layer in range(model.cfg.n_layers):
        for location, template in NODE_LOCATIONS.items():
            name = template.format(layer=layer)
            deviation = (cache[name].flatten(2) - circuit.ablation_values[name].flatten()).abs()
            per_channel = torch.einsum("bpc,bp->c", deviation, valid) / valid.sum()
            spread |= {(layer, location, channel): value for channel, value in enumerate(per_channel.tolist())}
    return spread


def ordered(edges: list[Edge], order: str, spread: dict[tuple, float]) -> list[Edge]:
    if order == "weight":
        return sorted(edges, key=lambda edge: abs(edge.weight))
    if order == "signal":
        return sorted(edges, key=lambda edge: abs(edge.weight) * spread[tuple(edge.source)])
    if order.startswith("random") and order[6:].isdigit():
        permutation = torch.randperm(len(edges), generator=torch.Generator().manual_seed(int(order[6:])))
        return [edges[i] for i in permutation.tolist()]
    raise SystemExit(f"--orders: {order!r} is not weight, signal or random<seed> (e.g. random1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(CHECKPOINTS_DIR / "sparse"), help="checkpoint folder")
    parser.add_argument("--circuit", default=str(CIRCUITS_DIR / "sparse_searched" / "bracket_counting"))
    parser.add_argument("--orders", nargs="+", default=["weight", "signal", "random1"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SparseTransformer.from_pretrained(args.model)
    circuit = Circuit.load(args.circuit, model)
    cfg = PruneConfig.of_circuit(circuit)
    pairs = PrunePairs.of_circuit(circuit, model)
    circuit_name = f"{Path(args.circuit).parent.name}/{Path(args.circuit).name}"
    report = {"benchmark": "edge_cleanup_order", "circuit": circuit_name, "shipped_edges": circuit.n_edges}
    with frozen(model):
        masks = cfg.new_masks(model, circuit.ablation_values)
        selection, test = cfg.evaluator(model, masks, pairs.selection), cfg.evaluator(model, masks, pairs.test)
        check = cfg.evaluator(model, masks, pairs.check) if pairs.check is not None else None
        node_masks = {name: mask.float() for name, mask in circuit.masks.items()}
        edges = circuit_edges(model, circuit.masks)
        spread = source_spread(model, circuit, pairs)
        report["edges_before_cleanup"] = len(edges)
        every_edge_tried = replace(cfg, cleanup_trials=10 * len(edges))
        for order in args.orders:
            start = time.perf_counter()
            removed, _ = cleanup_edges(
                model, node_masks, masks.means, selection, every_edge_tried, check, ordered(edges, order, spread)
            )
            with edges_ablated(model, removed, masks.means):
                test_loss = test.loss(node_masks, selection.fit(node_masks)[1])
            report[order] = {
                "edges": len(edges) - len(removed),
                "test_loss": round(test_loss, 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
