"""The full-text circuit listing: every kept node's input is its listed constant plus its listed edges."""

import pytest
import torch

from circuitlab.circuit import Circuit, circuit_edges, edges_ablated, node_shapes, weight_links
from circuitlab.model import NODE_LOCATIONS
from circuitlab.printout import circuit_text, constant_inputs


@pytest.fixture
def circuit(tiny_model) -> Circuit:
    """Random node masks (a third of every location kept), random ablation values, two edges removed."""
    generator = torch.Generator().manual_seed(0)
    shapes = node_shapes(tiny_model)
    masks = {name: torch.rand(shape, generator=generator) < 1 / 3 for name, shape in shapes.items()}
    means = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    edges = circuit_edges(tiny_model, masks)
    removed = [(edges[0].source, edges[0].target), (edges[-1].source, edges[-1].target)]
    return Circuit(
        "hand_made", masks, means, "mean", 0.15, 0.0, 0.0, 0.0, edges=circuit_edges(tiny_model, masks, removed),
        removed_edges=removed,
    )  # fmt: skip


def test_each_listed_input_is_the_linear_map_with_pruned_sources_at_their_values(tiny_model, circuit):
    """For every linear edge kind: the circuit's own pre-AbsTopK input of each kept target, computed from the
    weights with pruned sources held at their ablation values and removed edges folded, equals the listing's
    constant plus its edges times the kept sources' (arbitrary) values."""
    constants = constant_inputs(tiny_model, circuit)
    incoming = {}
    for edge in circuit.edges:
        incoming.setdefault(edge.target, []).append(edge)
    checked = 0
    with edges_ablated(tiny_model, circuit.removed_edges, circuit.ablation_values):
        for layer in range(tiny_model.cfg.n_layers):
            block = tiny_model.blocks[layer]
            biases = {"q": block.attn.b_Q, "k": block.attn.b_K, "v": block.attn.b_V}
            biases |= {"mlp_neuron": block.mlp.b_in, "mlp_write": block.mlp.b_out}
            for source, target, weight in weight_links(tiny_model, layer):
                if target == "attn_write":  # through attention: not a linear map of the sources
                    continue
                source_hook, target_hook = (NODE_LOCATIONS[x].format(layer=layer) for x in (source, target))
                keep = circuit.masks[source_hook].flatten().float()
                values = torch.randn(len(keep))
                held = values * keep + circuit.ablation_values[source_hook].flatten() * (1 - keep)
                pre = held @ weight + biases[target].detach().flatten()
                for index in circuit.masks[target_hook].flatten().nonzero().flatten().tolist():
                    node = next(n for n in constants if n == (layer, target, index))
                    listed = constants[node] + sum(e.weight * values[e.source.index] for e in incoming.get(node, []))
                    assert float(listed) == pytest.approx(pre[index].item(), abs=1e-5)
                    checked += 1
    assert checked > 20


def test_the_listing_has_a_line_per_node_and_every_edge(tiny_model, circuit):
    text = circuit_text(circuit, tiny_model, candidates=(5, 7))
    lines = text.splitlines()
    assert len(lines) == 1 + circuit.n_nodes + 1  # header, nodes, the logit difference
    for edge in circuit.edges:
        assert f"·{edge.source}" in next(line for line in lines if line.startswith(f"{edge.target} "))
    with pytest.raises(ValueError, match="loaded without its model"):
        circuit_text(Circuit("c", circuit.masks, circuit.ablation_values, "mean", 0.15, 0, 0, 0), tiny_model)
