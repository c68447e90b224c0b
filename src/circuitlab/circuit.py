"""`Circuit`: the nodes a task needs, the weights between them, how well they do the task, and tools to
save, draw, compare and run them.

Nodes are channels at the eight node locations (`circuitlab.model.NODE_LOCATIONS`). Edges are the nonzero
weights between kept nodes, exactly:

* `attn_read` channel c -> q, k or v channel (h, e): `W_Q/W_K/W_V[h, c, e] != 0`
* v channel (h, e) -> `attn_write` channel m: `W_O[h, e, m] != 0`
* `mlp_read` channel c -> neuron n: `W_in[c, n] != 0`
* neuron n -> `mlp_write` channel m: `W_out[n, m] != 0`

Edges are a function of the model's weights and the node masks, so a saved circuit stores only the masks
(and the edge count): `Circuit.load(path, model)` recomputes the edges and checks the count, which also
catches a circuit loaded with the wrong model.

Two further kinds of link are reported but not counted as edges, because no single weight carries them:
a q channel and the k channel with the same (head, dim) multiply in the attention score (`qk_pairs`), and a
write channel m feeds every later read of residual channel m through the residual stream (`residual_links`).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from circuitlab.checkpoint import write_atomic, write_text_atomic
from circuitlab.model import HEAD_LOCATIONS, NODE_LOCATIONS, SparseTransformer
from circuitlab.tasks import TaskBatch, length_buckets, task_loss

LOCATION_OF_HOOK = {template.split("{layer}.")[1]: location for location, template in NODE_LOCATIONS.items()}
LOCATION_RANK = {location: rank for rank, location in enumerate(NODE_LOCATIONS)}  # forward-pass order
READ_LOCATIONS = ("attn_read", "mlp_read")
WRITE_LOCATIONS = ("attn_write", "mlp_write")
WRITE_OF_SUBLAYER = {  # node location -> the location its sub-layer writes the residual stream through
    location: "attn_write" if rank <= LOCATION_RANK["attn_write"] else "mlp_write"
    for location, rank in LOCATION_RANK.items()
}
CIRCUIT_FORMAT_VERSION = 3
CIRCUIT_FIELDS = {"task_name", "ablation", "target_loss", "task_loss", "full_model_loss", "ablated_model_loss"} | {
    "necessity_loss",
    "n_edges",
    "history",
    "config",
}


class Node(NamedTuple):
    layer: int
    location: str
    index: int  # type: ignore[assignment]  # channel index (q, k, v: head * d_head + dim); shadows tuple.index

    def __str__(self) -> str:
        return f"L{self.layer}.{self.location}.{self.index}"

    @classmethod
    def parse(cls, text: str) -> Node:
        """'L3.mlp_neuron.17' -> Node(3, 'mlp_neuron', 17)."""
        layer, location, index = text.split(".")
        return cls(int(layer[1:]), location, int(index))


class Edge(NamedTuple):
    source: Node
    target: Node
    weight: float


def parse_hook(name: str) -> tuple[int, str]:
    """'blocks.3.attn.hook_q' -> (3, 'q')."""
    _, layer, rest = name.split(".", 2)
    return int(layer), LOCATION_OF_HOOK[rest]


def sublayer_order(node: Node) -> float:
    """Position along the forward pass: layer by layer, the node locations in `NODE_LOCATIONS`' order."""
    return node.layer * len(NODE_LOCATIONS) + LOCATION_RANK[node.location]


def node_shapes(model: SparseTransformer) -> dict[str, tuple[int, ...]]:
    """Hook name -> shape of its node mask (the trailing, per-channel dims of the activation): [n_heads, d_head]
    at q, k and v, [d_mlp] at the MLP neurons, [d_model] at the residual reads and writes."""
    cfg = model.cfg
    assert cfg.d_mlp is not None, "the config sets d_mlp (4 * d_model by default) when it is built"
    widths = dict.fromkeys(HEAD_LOCATIONS, (cfg.n_heads, cfg.d_head)) | {"mlp_neuron": (cfg.d_mlp,)}
    return {
        template.format(layer=layer): widths.get(location, (cfg.d_model,))
        for layer in range(cfg.n_layers)
        for location, template in NODE_LOCATIONS.items()
    }


def ablated_writes(masks: dict[str, Tensor]) -> set[str]:
    """The write hooks whose every channel `masks` (hook name -> 0/1 mask) ablate: their sub-layers then write
    their ablation constant whatever they compute."""
    return {name for name, keep in masks.items() if parse_hook(name)[1] in WRITE_LOCATIONS and not keep.any()}


def silent_nodes(masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """The kept nodes that cannot change the output (hook name -> bool mask): every node inside a sub-layer whose
    write channels are all ablated (`ablated_writes`)."""
    ablated, silent = ablated_writes(masks), {}
    for name, keep in masks.items():
        layer, location = parse_hook(name)
        write = NODE_LOCATIONS[WRITE_OF_SUBLAYER[location]].format(layer=layer)
        silent[name] = keep.bool() & (name != write and write in ablated)
    return silent


def keep_or_ablate(activation: Tensor, keep: Tensor, value: Tensor) -> Tensor:
    """A node location's output under a 0/1 `keep` mask over its channels: the activation where kept, the
    ablation `value` elsewhere (the rule of circuits and of pruning's masks alike)."""
    return activation * keep + value * (1 - keep)


@contextlib.contextmanager
def constant_writes(model: SparseTransformer, writes: dict[str, Tensor]) -> Iterator[None]:
    """Inside the block, each sub-layer of `model` whose write hook (`blocks.{layer}.hook_attn_out` or
    `hook_mlp_out`) is a key of `writes` is not computed: it writes the given [d_model] constant through that
    hook instead, and the hooks inside it do not run. A sub-layer whose every write channel is ablated writes
    exactly that constant whatever it computes (`skippable`)."""
    fields = {"attn_write": "attn_out_constant", "mlp_write": "mlp_out_constant"}
    changed, node_locations = [], node_shapes(model)
    try:
        for name, value in writes.items():
            layer, location = parse_hook(name) if name in node_locations else (-1, "")
            if location not in fields:
                raise ValueError(
                    f"{name!r} is not a write hook of this model: blocks.<layer>.hook_attn_out|hook_mlp_out"
                )
            setattr(model.blocks[layer], fields[location], value)
            changed.append((model.blocks[layer], fields[location]))
        yield
    finally:
        for block, field in changed:
            setattr(block, field, None)


def skippable(keep: dict[str, Tensor], values: dict[str, Tensor]) -> tuple[dict[str, Tensor], set[str]]:
    """How to run 0/1 `keep` masks (hook name -> mask) for less work and the same logits: the write
    hooks whose every channel is ablated, each with the constant its sub-layer then writes (`constant_writes`),
    and the hooks that still change anything (one that keeps everything, or sits on a replaced write, does not)."""
    writes = {name: values[name] for name in ablated_writes(keep)}
    return writes, {name for name, k in keep.items() if name not in writes and not k.all()}


def last_position_logits(model: SparseTransformer, batch: TaskBatch) -> tuple[Tensor, TaskBatch]:
    """Logits at each prompt's last position only ([n, 1, vocab]) and the batch re-indexed to match. Only
    attention moves information between positions, so everything after the last attention sub-layer that is
    computed (not replaced by a constant, `constant_writes`) runs on the last positions alone, and that
    sub-layer computes one query per prompt: elsewhere it would be wasted work."""
    computed = [layer for layer, block in enumerate(model.blocks) if block.attn_out_constant is None]
    layer = computed[-1] if computed else 0
    resid = model(batch.tokens, stop_at=f"blocks.{layer}.hook_resid_pre")
    resid = model.blocks[layer].attention_sublayer(resid, batch.last)
    last_tokens = batch.tokens[torch.arange(len(batch)), batch.last][:, None]
    logits = model(resid, start_at=f"blocks.{layer}.hook_resid_mid", tokens=last_tokens)
    return logits, TaskBatch(batch.tokens, torch.zeros_like(batch.last), batch.target, batch.alternative)


@dataclass(frozen=True)
class Calibration:
    """A scale and shift of the final logits, fitted to a circuit (the paper: discretised circuits are badly
    calibrated). Every logit is multiplied by `scale`; `positive` gains `shift / 2` and `negative` loses it, so
    the margin between the two candidates becomes `scale * margin + shift` (minus shift when `negative` is the
    target). The identity when scale is 1 and shift 0."""

    scale: float = 1.0
    shift: float = 0.0
    positive: int = -1  # token ids of the two candidates; -1 when no shift is fitted
    negative: int = -1

    def margins(self, margins: Tensor, target: Tensor, alternative: Tensor) -> Tensor:
        """Calibrated target-minus-alternative margins, from uncalibrated ones."""
        sign = (target == self.positive).float() - (target == self.negative).float()
        pair = ((target == self.positive) & (alternative == self.negative)) | (
            (target == self.negative) & (alternative == self.positive)
        )
        return self.scale * margins + self.shift * sign * pair.float()

    def apply(self, logits: Tensor) -> Tensor:
        """Calibrated logits ([..., d_vocab])."""
        out = logits * self.scale
        if self.positive >= 0:
            out[..., self.positive] += self.shift / 2
            out[..., self.negative] -= self.shift / 2
        return out

    @classmethod
    def fit(cls, margins: Tensor, target: Tensor, alternative: Tensor, steps: int = 16) -> Calibration:
        """The scale (kept positive) and shift that lower the mean binary cross-entropy of the margins, by
        `steps` LBFGS iterations as in the paper. A shift only when every prompt chooses between the same two
        tokens. The few steps also regularise, so the exact minimum is no improvement: on the trained masks of
        the random-model control (`tests/test_known_circuits.py`) it lies at scale 467, which turns a tiny,
        meaningless signal into a held-out loss of 0.52, where 16 steps stop at scale 15 and 0.68."""
        candidates = torch.cat([target, alternative]).unique()
        positive, negative = (int(candidates[0]), int(candidates[1])) if len(candidates) == 2 else (-1, -1)
        margins = margins.double()
        sign = ((target == positive).double() - (target == negative).double()) if positive >= 0 else 0 * margins
        log_scale = torch.zeros((), dtype=torch.double, requires_grad=True)
        shift = torch.zeros((), dtype=torch.double, requires_grad=positive >= 0)
        params = [log_scale, shift] if positive >= 0 else [log_scale]
        optimizer = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.softplus(-(log_scale.exp() * margins + shift * sign)).mean()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        return cls(log_scale.exp().item(), shift.item(), positive, negative)


@dataclass
class Circuit:
    """A task's circuit in one model: node masks per hook, the constants pruned nodes are replaced by,
    and the losses that say how good it is (per-prompt binary cross-entropy on held-out pairs)."""

    task_name: str
    masks: dict[str, Tensor]  # hook name -> bool mask over its channels
    ablation_values: dict[str, Tensor]  # hook name -> what a pruned channel is replaced by
    ablation: str
    target_loss: float
    task_loss: float  # the circuit alone: sufficiency
    full_model_loss: float
    ablated_model_loss: float  # every node ablated
    necessity_loss: float = float("nan")  # only the circuit's nodes ablated
    edges: list[Edge] | None = None  # None for a circuit loaded without its model
    saved_n_edges: int | None = None  # the edge count a saved circuit records
    scores: dict[str, Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)  # applied by `loss` and `to_model`
    selection_loss: float = float("nan")  # on the pairs that chose the circuit (not a held-out number)
    uncalibrated_loss: float = float("nan")  # the circuit alone on held-out pairs, without the calibration
    search: dict = field(default_factory=dict)  # what the search found before cleanup
    removed_edges: list[tuple[Node, Node]] = field(default_factory=list)  # weights between kept nodes ablated

    # ------------------------------------------------------------------ nodes and edges

    @property
    def nodes(self) -> list[Node]:
        nodes = []
        for name, mask in self.masks.items():
            layer, location = parse_hook(name)
            nodes += [Node(layer, location, int(i)) for i in mask.flatten().nonzero().flatten()]
        return sorted(nodes, key=lambda node: (sublayer_order(node), node.index))

    def ranked_nodes(self) -> list[Node]:
        """The circuit's nodes, highest pruning score (most needed) first; in node order without scores."""
        if not self.scores:
            return self.nodes
        hook_of = {parse_hook(name): name for name in self.masks}
        return sorted(self.nodes, key=lambda n: -self.scores[hook_of[n.layer, n.location]].flatten()[n.index].item())

    @property
    def n_nodes(self) -> int:
        return int(sum(mask.sum() for mask in self.masks.values()))

    @property
    def n_edges(self) -> int:
        if self.edges is not None:
            return len(self.edges)
        if self.saved_n_edges is None:
            raise ValueError(f"the {self.task_name} circuit has neither edges nor a saved edge count")
        return self.saved_n_edges

    @property
    def nodes_by_location(self) -> dict[str, int]:
        counts = dict.fromkeys(NODE_LOCATIONS, 0)
        for node in self.nodes:
            counts[node.location] += 1
        return counts

    @property
    def qk_pairs(self) -> list[tuple[Node, Node]]:
        kept = set(self.nodes)
        return [(n, Node(n.layer, "k", n.index)) for n in kept if n.location == "q" and (n.layer, "k", n.index) in kept]

    @property
    def residual_links(self) -> list[tuple[Node, Node]]:
        writes = [n for n in self.nodes if n.location in WRITE_LOCATIONS]
        reads = [n for n in self.nodes if n.location in READ_LOCATIONS]
        return [(w, r) for w in writes for r in reads if w.index == r.index and sublayer_order(r) > sublayer_order(w)]

    def summary(self) -> dict:
        return {
            "task": self.task_name,
            "nodes": self.n_nodes,
            "edges": self.n_edges,
            "qk_pairs": len(self.qk_pairs),
            "residual_links": len(self.residual_links),
            "task_loss": round(self.task_loss, 4),
            "uncalibrated_loss": round(self.uncalibrated_loss, 4),
            "necessity_loss": round(self.necessity_loss, 4),
            "full_model_loss": round(self.full_model_loss, 4),
            "ablated_model_loss": round(self.ablated_model_loss, 4),
            "target_loss": self.target_loss,
            "ablation": self.ablation,
        }

    # ------------------------------------------------------------------ running

    def kept(self, invert: bool = False) -> dict[str, Tensor]:
        """The 0/1 float mask of each hook point (with invert, the circuit's complement)."""
        return {name: 1 - mask.float() if invert else mask.float() for name, mask in self.masks.items()}

    def hooks(self, invert: bool = False) -> list[tuple[str | Callable, Callable]]:
        """Forward hooks that ablate every node outside the circuit (or, with invert, every node in it)."""

        def make_hook(keep: Tensor, value: Tensor):
            return lambda activation, hook: keep_or_ablate(activation, keep, value)

        return [(name, make_hook(keep, self.ablation_values[name])) for name, keep in self.kept(invert).items()]

    @torch.no_grad()
    def loss(self, model: SparseTransformer, batch, invert: bool = False, calibrated: bool = True) -> float:
        """Task loss on `batch` with everything outside the circuit ablated, calibrated as the circuit was
        fitted (or, with invert, the circuit itself ablated; no calibration then). Sub-layers ablated whole are
        not computed (`skippable`)."""
        total = 0.0
        writes, needed = skippable(self.kept(invert), self.ablation_values)
        with (
            torch.no_grad(),
            edges_ablated(model, [] if invert else self.removed_edges, self.ablation_values),
            constant_writes(model, writes),
            model.hooks(fwd_hooks=[(name, hook) for name, hook in self.hooks(invert) if name in needed]),
        ):
            for bucket in length_buckets(batch):  # prompts of similar length: little compute spent on padding
                logits, at_last = last_position_logits(model, bucket)
                if calibrated and not invert:
                    logits = self.calibration.apply(logits)
                total += task_loss(logits, at_last, reduction="sum").item()
        return total / len(batch)

    def to_model(self, model: SparseTransformer) -> SparseTransformer:
        """A standalone copy of `model` in which every pruned node is its constant (permanent hooks), every
        removed edge's weight is folded into its target's bias, and the calibration into the unembedding (and
        bigram table), so it runs the circuit with plain `model(tokens)` and works with caches and hooks."""
        pruned = copy.deepcopy(model)
        pruned.reset_hooks(including_permanent=True)
        for name, hook in self.hooks():
            pruned.add_hook(name, hook, is_permanent=True)
        ablate_edges(pruned, self.removed_edges, self.ablation_values)
        with torch.no_grad():
            pruned.unembed.W_U.mul_(self.calibration.scale)
            pruned.unembed.b_U.copy_(self.calibration.apply(pruned.unembed.b_U))
            if pruned.cfg.bigram_table:
                pruned.bigram.W_bigram.mul_(self.calibration.scale)
        return pruned

    # ------------------------------------------------------------------ saving

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        directory = Path(directory)
        if (directory / "circuit.json").exists() and not overwrite:
            raise FileExistsError(f"{directory} already holds a circuit; pass overwrite=True to replace it.")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"mask/{k}": v.to(torch.uint8) for k, v in self.masks.items()}
        tensors |= {f"ablation/{k}": v.contiguous() for k, v in self.ablation_values.items()}
        tensors |= {f"score/{k}": v.contiguous() for k, v in self.scores.items()}
        write_atomic(directory / "circuit.safetensors", lambda path: save_file(tensors, path))
        meta = {
            "format_version": CIRCUIT_FORMAT_VERSION,
            **{k: getattr(self, k) for k in ("task_name", "ablation", "target_loss", "task_loss")},
            **{k: getattr(self, k) for k in ("full_model_loss", "ablated_model_loss", "necessity_loss")},
            "n_edges": self.n_edges,
            "calibration": asdict(self.calibration),
            "selection_loss": self.selection_loss,
            "uncalibrated_loss": self.uncalibrated_loss,
            "search": self.search,
            "removed_edges": [[str(source), str(target)] for source, target in self.removed_edges],
            "summary": self.summary(),
            "history": self.history,
            "config": self.config,
        }
        write_text_atomic(directory / "circuit.json", json.dumps(meta, indent=1) + "\n")  # last: marks it complete
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: SparseTransformer | None = None) -> Circuit:
        """Load a saved circuit; with the `model` it was pruned on, its edges are recomputed (and checked)."""
        directory = Path(directory)
        for name in ("circuit.json", "circuit.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing: {directory} is not a saved circuit.")
        try:
            meta = json.loads((directory / "circuit.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{directory / 'circuit.json'} is not valid JSON ({err}); prune the task again.") from None
        if not isinstance(meta, dict) or not set(meta) >= CIRCUIT_FIELDS:
            missing = sorted(CIRCUIT_FIELDS - set(meta)) if isinstance(meta, dict) else "everything"
            raise ValueError(f"{directory / 'circuit.json'} is not a circuit file: it lacks {missing}.")
        if meta.get("format_version", 0) > CIRCUIT_FORMAT_VERSION:
            raise ValueError(f"{directory} was saved by a newer circuitlab (format {meta['format_version']}).")
        try:
            tensors = load_file(directory / "circuit.safetensors")
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{directory / 'circuit.safetensors'} cannot be read ({err}); prune the task again."
            ) from None

        def group(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        masks = {k: v.bool() for k, v in group("mask/").items()}
        edges = None
        if model is not None:
            expected = node_shapes(model)
            found = {name: tuple(mask.shape) for name, mask in masks.items()}
            if found != expected:
                raise ValueError(f"{directory} does not fit this model: its node masks differ in names or shapes.")
            removed = [(Node.parse(a), Node.parse(b)) for a, b in meta.get("removed_edges", [])]
            edges = circuit_edges(model, masks, removed)
            if len(edges) != meta["n_edges"]:
                raise ValueError(
                    f"{directory} was pruned on a different model: it records {meta['n_edges']} edges, this "
                    f"model's weights give {len(edges)}. Load it with the checkpoint it was pruned on."
                )
        return cls(
            task_name=meta["task_name"],
            masks=masks,
            ablation_values=group("ablation/"),
            ablation=meta["ablation"],
            target_loss=meta["target_loss"],
            task_loss=meta["task_loss"],
            full_model_loss=meta["full_model_loss"],
            ablated_model_loss=meta["ablated_model_loss"],
            necessity_loss=meta["necessity_loss"],
            edges=edges,
            saved_n_edges=meta["n_edges"],
            scores=group("score/"),
            history=meta["history"],
            config=meta["config"],
            calibration=Calibration(**meta.get("calibration", {})),
            selection_loss=meta.get("selection_loss", float("nan")),
            uncalibrated_loss=float(meta["uncalibrated_loss" if "uncalibrated_loss" in meta else "task_loss"]),
            search=meta.get("search", {}),
            removed_edges=[(Node.parse(a), Node.parse(b)) for a, b in meta.get("removed_edges", [])],
        )


def weight_links(model: SparseTransformer, layer: int) -> list[tuple[str, str, Tensor]]:
    """(source location, target location, weight [n_source, n_target]) for every kind of edge in `layer`, with
    q, k, v channels numbered head * d_head + dim. The weights are views where the layout allows (W_O, W_in,
    W_out) and copies for W_Q, W_K, W_V; `weight_entry` gives the writable entry of one edge."""
    block, d_model = model.blocks[layer], model.cfg.d_model
    W_Q, W_K, W_V = (W.detach() for W in block.attn.qkv_matrices())
    return [
        ("attn_read", "q", W_Q),
        ("attn_read", "k", W_K),
        ("attn_read", "v", W_V),
        ("v", "attn_write", block.attn.W_O.detach().reshape(-1, d_model)),
        ("mlp_read", "mlp_neuron", block.mlp.W_in.detach()),
        ("mlp_neuron", "mlp_write", block.mlp.W_out.detach()),
    ]


def weight_entry(model: SparseTransformer, source: Node, target: Node) -> tuple[Tensor, tuple, Tensor, tuple]:
    """The parameter and index holding edge source -> target, and the bias (and index) of its target."""
    block, d_head = model.blocks[source.layer], model.cfg.d_head
    if target.location in HEAD_LOCATIONS:
        head, dim = divmod(target.index, d_head)
        letter = target.location.upper()
        attn = block.attn
        return getattr(attn, f"W_{letter}"), (head, source.index, dim), getattr(attn, f"b_{letter}"), (head, dim)
    if target.location == "attn_write":
        head, dim = divmod(source.index, d_head)
        return block.attn.W_O, (head, dim, target.index), block.attn.b_O, (target.index,)
    if target.location == "mlp_neuron":
        return block.mlp.W_in, (source.index, target.index), block.mlp.b_in, (target.index,)
    return block.mlp.W_out, (source.index, target.index), block.mlp.b_out, (target.index,)


def ablate_edges(
    model: SparseTransformer, edges: Iterable[tuple[Node, Node]], ablation_values: dict[str, Tensor]
) -> Callable[[], None]:
    """Set each edge's weight to zero and add its source's ablation value (times the weight) to the target's
    bias, in place: the edge carries its source's constant instead of its activation. Returns the undo.

    Exact for every edge but v -> attn_write in a model with attention sinks, where the constant is carried as
    if the attention weights summed to one (they sum to one minus the sink's share)."""
    saved = []
    with torch.no_grad():
        for source, target in edges:
            weight, w_index, bias, b_index = weight_entry(model, source, target)
            saved.append((weight, w_index, weight[w_index].clone(), bias, b_index, bias[b_index].clone()))
            value = ablation_values[NODE_LOCATIONS[source.location].format(layer=source.layer)].flatten()
            bias[b_index] += weight[w_index] * value[source.index]
            weight[w_index] = 0.0

    @torch.no_grad()
    def undo() -> None:
        for weight, w_index, w_value, bias, b_index, b_value in reversed(saved):
            weight[w_index] = w_value
            bias[b_index] = b_value

    return undo


@contextlib.contextmanager
def edges_ablated(
    model: SparseTransformer, edges: Iterable[tuple[Node, Node]], ablation_values: dict[str, Tensor]
) -> Iterator[SparseTransformer]:
    """`ablate_edges` for the duration of a `with` block."""
    undo = ablate_edges(model, edges, ablation_values)
    try:
        yield model
    finally:
        undo()


def circuit_edges(
    model: SparseTransformer, masks: dict[str, Tensor], removed: Iterable[tuple[Node, Node]] = ()
) -> list[Edge]:
    """The nonzero weights between kept nodes (the convention in the module docstring), minus `removed` ones."""
    removed = set(removed)
    edges = []
    for layer in range(model.cfg.n_layers):
        kept = {loc: masks[tmpl.format(layer=layer)].flatten().bool() for loc, tmpl in NODE_LOCATIONS.items()}
        for source, target, weight in weight_links(model, layer):
            live = (weight != 0) & kept[source][:, None] & kept[target][None, :]
            for i, j in live.nonzero().tolist():
                pair = (Node(layer, source, i), Node(layer, target, j))
                if pair not in removed:
                    edges.append(Edge(*pair, weight[i, j].item()))
    return edges


def load_circuits(directory: str | Path, model: SparseTransformer | None = None) -> dict[str, Circuit]:
    """Every circuit saved under `directory` (one folder per task), keyed by task name (see `Circuit.load`)."""
    return {
        path.parent.name: Circuit.load(path.parent, model) for path in sorted(Path(directory).glob("*/circuit.json"))
    }


def load_seed_runs(directory: str | Path, seeds: Sequence[int] = (1, 2)) -> dict[str, dict[str, Circuit]]:
    """The circuits of `directory` as "seed 0" and of each `<directory>_seed<N>` folder that exists as "seed N"
    (the folders `make_circuits --set seed=N --out <directory>_seedN` writes), for `compare.seed_spread`."""
    directory = Path(directory)
    siblings = {seed: directory.with_name(f"{directory.name}_seed{seed}") for seed in seeds}
    return {"seed 0": load_circuits(directory)} | {
        f"seed {seed}": load_circuits(folder) for seed, folder in siblings.items() if folder.exists()
    }
