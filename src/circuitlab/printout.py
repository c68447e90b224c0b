"""A circuit in full, as text: every node, every weight, and the constants the pruned rest of the model adds.

`circuit_text(circuit, model)` lists the circuit in forward order, one line per node, in the form a reader of
chapters 03–05 checks a mechanism against:

    L0.k.41  (head 2, dim 9) = AbsTopK(-0.213 + 0.38·L0.attn_read.106 - 0.11·L0.attn_read.93)

Each sum is a kept node's whole input: its incoming edges (weights between kept nodes) and one constant, which
is its bias plus what every pruned source contributes at its ablation value (and every removed edge, whose
weight `circuit.ablate_edges` folds the same way). The constants are exact for the linear maps (residual read
-> q, k, v; read -> neuron; neuron -> write). For v -> attention write, a pruned v channel's constant reaches
the write through the attention pattern, whose rows sum to one minus the sink's share: the listed constant is
the value with no sink weight (marked ≈ when the model has sinks).

What the listing cannot show is the AbsTopK at every node location: a kept channel passes at a position only
while it is among the location's k largest in magnitude, ranked against the pruned channels' *live* values.
On the shipped circuits this gating matters (turning AbsTopK off raises `single_double_quote`'s held-out
loss from 0.118 to 0.181 and `bracket_counting`'s from 0.135 to 0.915), so a circuit is read with its gates
in mind, and checked by running it (`Circuit.loss`, `Circuit.to_model`), not by the listing alone.
"""

from __future__ import annotations

from collections import defaultdict

from circuitlab.circuit import READ_LOCATIONS, Circuit, Edge, Node, weight_links
from circuitlab.model import NODE_LOCATIONS, SparseTransformer

BIASES = {"q": "b_Q", "k": "b_K", "v": "b_V", "attn_write": "b_O", "mlp_neuron": "b_in", "mlp_write": "b_out"}
FORMULA = {
    "q": "AbsTopK({})",
    "k": "AbsTopK({})",
    "v": "AbsTopK({})",
    "attn_write": "AbsTopK(attention over {})",
    "mlp_neuron": "AbsTopK(act({}))",
    "mlp_write": "AbsTopK({})",
}


def hook_name(node: Node) -> str:
    return NODE_LOCATIONS[node.location].format(layer=node.layer)


def node_label(node: Node, d_head: int) -> str:
    """'L0.q.38  (head 2, dim 6)' for q, k, v channels; the node's own name otherwise."""
    if node.location in ("q", "k", "v"):
        head, dim = divmod(node.index, d_head)
        return f"{node}  (head {head}, dim {dim})"
    return str(node)


def bias(model: SparseTransformer, node: Node) -> float:
    """The bias entry of a node that has one (every location but the residual reads)."""
    block = model.blocks[node.layer]
    module = block.attn if node.location in ("q", "k", "v", "attn_write") else block.mlp
    return getattr(module, BIASES[node.location]).detach().flatten()[node.index].item()


def constant_inputs(model: SparseTransformer, circuit: Circuit) -> dict[Node, float]:
    """Per kept node with a bias: the bias plus every pruned source's ablation value times its weight (and every
    removed edge's, folded the same way), i.e. its input when all of its circuit edges carry zero."""
    kept = {name: mask.flatten().float() for name, mask in circuit.masks.items()}
    removed = defaultdict(list)
    for source, target in circuit.removed_edges:
        removed[target].append(source)
    constants = {}
    for layer in range(model.cfg.n_layers):
        for source_location, target_location, weight in weight_links(model, layer):
            source_hook = NODE_LOCATIONS[source_location].format(layer=layer)
            target_hook = NODE_LOCATIONS[target_location].format(layer=layer)
            means = circuit.ablation_values[source_hook].flatten()
            pruned_in = (means * (1 - kept[source_hook])) @ weight  # [n_target]
            for index in kept[target_hook].nonzero().flatten().tolist():
                node = Node(layer, target_location, index)
                folded = sum(weight[s.index, index].item() * means[s.index].item() for s in removed[node])
                constants[node] = bias(model, node) + pruned_in[index].item() + folded
    return constants


def signed_sum(constant: float | None, terms: list[tuple[float, str]], approximate: bool = False) -> str:
    """'0.125 + 0.40·a - 0.38·b' (no constant when `constant` is None; '≈' before an approximate one)."""
    text = "" if constant is None else f"{'≈' if approximate else ''}{constant:.3f}"
    for weight, name in terms:
        sign = "-" if weight < 0 else "+"
        text += f"{sign}{abs(weight):.2f}·{name}" if not text else f" {sign} {abs(weight):.2f}·{name}"
    return text


def unembedding_line(model: SparseTransformer, circuit: Circuit, candidates: tuple[int, int]) -> str:
    """How each residual channel the circuit writes moves the logit difference between the two candidates:
    the unembedding's difference times the final norm's weight (before the norm's scale, shared by all)."""
    writes = sorted({n.index for n in circuit.nodes if n.location in ("attn_write", "mlp_write")})
    W_U, gain = model.unembed.W_U.detach(), model.ln_final.get_parameter("w").detach()
    direction = (W_U[:, candidates[0]] - W_U[:, candidates[1]]) * gain
    terms = [(direction[channel].item(), f"resid.{channel}") for channel in writes]
    first, second = (repr(model.tokenizer.decode([token])) for token in candidates)
    return f"logit {first} - logit {second} = ({signed_sum(None, terms) or 0} + other channels) / final norm scale"


def circuit_text(circuit: Circuit, model: SparseTransformer, candidates: tuple[int, int] | None = None) -> str:
    """The whole circuit, one line per node in forward order (see the module docstring for what it shows).
    `candidates`: the task's two token ids, for a last line on how the written channels move their logits."""
    if circuit.edges is None:
        raise ValueError(f"the {circuit.task_name} circuit was loaded without its model: Circuit.load(path, model)")
    incoming: dict[Node, list[Edge]] = defaultdict(list)
    for edge in circuit.edges:
        incoming[edge.target].append(edge)
    constants = constant_inputs(model, circuit)
    writers: dict[int, list[Node]] = defaultdict(list)
    for write, read in circuit.residual_links:
        writers[read.index].append(write)
    summary = circuit.summary()
    c = circuit.calibration
    lines = [
        f"{circuit.task_name}: {summary['nodes']} nodes, {summary['edges']} edges, held-out loss "
        f"{summary['task_loss']} (uncalibrated {summary['uncalibrated_loss']}); calibration: logits x{c.scale:.2f}"
        + (f", shift {c.shift:+.2f} between tokens {c.positive} and {c.negative}" if c.positive >= 0 else "")
    ]
    sinks = model.cfg.attn_sink
    for node in circuit.nodes:
        label = node_label(node, model.cfg.d_head)
        if node.location in READ_LOCATIONS:  # a residual channel, read: no weights of its own
            sources = ", ".join(str(n) for n in writers[node.index]) or "none in the circuit"
            mean = circuit.ablation_values[hook_name(node)].flatten()[node.index].item()
            lines.append(
                f"{label}  reads residual channel {node.index} (circuit writes: {sources}; ablated {mean:.3f})"
            )
            continue
        terms = [(edge.weight, str(edge.source)) for edge in sorted(incoming[node], key=lambda e: -abs(e.weight))]
        inner = signed_sum(constants[node], terms, approximate=sinks and node.location == "attn_write")
        lines.append(f"{label} = {FORMULA[node.location].format(inner)}")
    if candidates is not None:
        lines.append(unembedding_line(model, circuit, candidates))
    return "\n".join(lines)
