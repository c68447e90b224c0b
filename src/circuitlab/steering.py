"""Steer the dense model through one interpretable channel of the bridged sparse model (the paper's Figure 9).

A circuit node that reads or writes the residual stream (`attn_read`, `mlp_read`, `attn_write`, `mlp_write`)
is a residual channel at one site: a read node at the site before its sub-layer, a write node at the site after.
On a prompt that asks for the task's second candidate (a string opened with `"`), we push that channel, at every
token, from its value there toward its value on the matched contrasting prompt (opened with `'`) with a
strength s in [0, 1]; the push, mapped through the bridge's decoder (delta_dense = W_dec[:, channel] * delta),
is added to the dense model's residual stream at that site, and the dense model runs on from there. We read
p(first candidate) at the last token. Controls: the same push along the other channels outside the circuit, each
rescaled to the same norm in the dense model (their mean: the expected effect of a random channel, without the
luck of a draw), and the same edit made in the sparse model itself.

    effects, curve = steer_task(pair, circuit)   # rank the circuit's residual nodes, steer the best one
    steering_effect(curve)                      # change in p(candidate 0) at s = 1, and its ratio to the control
    channel_ranking(pair, node, circuit, batch) # the same push along every channel: where does the node rank?
    channel_spread(pair.sparse, batch)          # is the contrast held by one channel per site, or spread?
    save_steering(directory, effects, curve)    # what `python -m circuitlab.make_steering` ships; load_steering
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor

from circuitlab.bridges import BridgedPair, residual_stream
from circuitlab.checkpoint import write_text_atomic
from circuitlab.circuit import Circuit, Node
from circuitlab.model import SparseTransformer
from circuitlab.prune import PrunePairs
from circuitlab.tasks import TaskBatch

STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
NODES_FILE, CURVE_FILE, CURVE_INFO_FILE, CHANNELS_FILE = "nodes.csv", "curve.csv", "curve.json", "channels.csv"
# Residual-stream node locations -> where their channel lives: the site index before (0) or after (1) the
# sub-layer, counted from the sub-layer's own index (2 * layer for attention, 2 * layer + 1 for the MLP).
RESIDUAL_LOCATIONS = {"attn_read": (0, 0), "attn_write": (0, 1), "mlp_read": (1, 0), "mlp_write": (1, 1)}


def residual_site(model: SparseTransformer, node: Node) -> str:
    """The residual site whose channel `node.index` the node reads or writes."""
    if node.location not in RESIDUAL_LOCATIONS:
        raise ValueError(
            f"node {node} is at {node.location!r}, not a residual channel; steer a node at one of "
            f"{sorted(RESIDUAL_LOCATIONS)}"
        )
    sublayer, after = RESIDUAL_LOCATIONS[node.location]
    return model.residual_sites[2 * node.layer + sublayer + after]


def contrast_rows(batch: TaskBatch) -> tuple[Tensor, Tensor, Tensor]:
    """From a TaskBatch of pairs (row 2i answered by candidate 0, row 2i + 1 by candidate 1), the prompts to
    steer (candidate 1), their contrasting prompts (candidate 0) and their last positions, keeping the pairs
    whose two prompts have the same number of tokens, so the edit lines up token by token."""
    first, second = batch.last[0::2], batch.last[1::2]
    same = (first == second).nonzero().flatten()
    return batch.tokens[1::2][same], batch.tokens[0::2][same], second[same]


def residual_nodes(circuit: Circuit) -> list[Node]:
    return [node for node in circuit.nodes if node.location in RESIDUAL_LOCATIONS]


def residual_channels(circuit: Circuit) -> set[int]:
    """The residual channels the circuit's residual nodes read or write (at any site)."""
    return {node.index for node in residual_nodes(circuit)}


def target_probability(logits: Tensor, last: Tensor, token: int) -> Tensor:
    """[prompt]: the probability of `token` at each prompt's last position."""
    return logits[torch.arange(len(last)), last].softmax(-1)[:, token]


@torch.no_grad()
def node_effects(model: SparseTransformer, circuit: Circuit, batch: TaskBatch) -> pd.DataFrame:
    """For each residual node of the circuit, on the pairs of `batch`: `separation`, the RMS of the channel's
    change between the two prompts of a pair over the channel's own RMS, and `patch_effect`, the rise in the
    model's mean p(candidate 0) when the channel takes its contrasting value at every token (the steering edit
    at s = 1, in the model itself). Sorted by `patch_effect`: the first row is the node to steer."""
    source, contrast, last = contrast_rows(batch)
    target = int(batch.target[0])
    streams: dict[str, tuple[Tensor, Tensor, Tensor]] = {}  # site -> (source and contrast streams, p before)
    rows = []
    for node in residual_nodes(circuit):
        site = residual_site(model, node)
        if site not in streams:
            resid = model(source, stop_at=site)
            before = target_probability(model(resid, start_at=site, tokens=source), last, target).mean()
            streams[site] = resid, model(contrast, stop_at=site), before
        resid, contrast_resid, before = streams[site]
        delta = contrast_resid[..., node.index] - resid[..., node.index]
        patched = resid.clone()
        patched[..., node.index] += delta
        after = target_probability(model(patched, start_at=site, tokens=source), last, target).mean()
        scale = resid[..., node.index].pow(2).mean().sqrt().clamp_min(1e-12)
        rows.append(
            {
                "node": str(node),
                "site": site,
                "separation": (delta.pow(2).mean().sqrt() / scale).item(),
                "patch_effect": (after - before).item(),
            }
        )
    if not rows:
        raise ValueError(
            f"the {circuit.task_name} circuit has no residual-stream node to steer ({circuit.n_nodes} nodes)"
        )
    return pd.DataFrame(rows).set_index("node").sort_values("patch_effect", ascending=False)


class SteeringEdit(NamedTuple):
    """One node's edit on the aligned pairs of a batch, in both models, before any strength is applied."""

    source: Tensor  # [prompt, pos] tokens of the prompts to steer
    last: Tensor  # [prompt] their last positions
    target: int  # the candidate the edit pushes toward
    site: str
    delta: Tensor  # [prompt, pos, 1]: the node's channel on the contrasting prompts minus on the steered ones
    sparse_resid: Tensor  # the sparse model's residual stream at `site` on the steered prompts
    dense_resid: Tensor  # the dense model's
    decoder: Tensor  # [d_dense, d_sparse]: the bridge's decoder at `site`

    @classmethod
    def of(cls, pair: BridgedPair, node: Node, batch: TaskBatch) -> SteeringEdit:
        source, contrast, last = contrast_rows(batch)
        if not len(source):
            raise ValueError("no pair in `batch` has two prompts of the same length; steering needs aligned pairs")
        site = residual_site(pair.sparse, node)
        sparse_resid = pair.sparse(source, stop_at=site)
        delta = (pair.sparse(contrast, stop_at=site) - sparse_resid)[..., node.index, None]
        target = int(batch.target[0])  # row 0 is answered by candidate 0
        decoder = pair.bridges.decoder_matrix(site)
        return cls(source, last, target, site, delta, sparse_resid, pair.dense(source, stop_at=site), decoder)

    def directions(self, channels: Tensor, norm_of: int) -> Tensor:
        """[channel, d_dense]: the decoder's columns of `channels`, each rescaled to channel `norm_of`'s norm."""
        columns = self.decoder[:, channels].T
        return columns * self.decoder[:, norm_of].norm() / columns.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def dense_probability(self, pair: BridgedPair, direction: Tensor, strength: float) -> float:
        """The dense model's mean p(target) with the edit times `strength` added along `direction`."""
        steered = self.dense_resid + strength * self.delta * direction
        logits = pair.dense(steered, start_at=self.site, tokens=self.source)
        return target_probability(logits, self.last, self.target).mean().item()


def channels_outside(pair: BridgedPair, node: Node, circuit: Circuit) -> tuple[Tensor, bool]:
    """The residual channels other than `node`'s that no residual node of `circuit` uses (every other channel,
    flagged False, when the circuit holds them all)."""
    taken = residual_channels(circuit)
    others = [c for c in range(pair.sparse.cfg.d_model) if c != node.index]
    outside = [c for c in others if c not in taken]
    return torch.tensor(outside or others), bool(outside)


@torch.no_grad()
def steering_curve(
    pair: BridgedPair,
    node: Node,
    circuit: Circuit,
    batch: TaskBatch,
    strengths: Sequence[float] = STRENGTHS,
    n_random: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean p(candidate 0) at the last token of the steered prompts, for each strength: `dense` through the
    bridge; `random`, the same push along the channels outside the circuit, each rescaled to the same dense norm,
    averaged over all of them (or over `n_random` drawn with `seed`); `sparse`, the same edit in the sparse model.
    `batch` holds pairs that chose neither circuit nor node."""
    edit = SteeringEdit.of(pair, node, batch)
    outside, is_outside = channels_outside(pair, node, circuit)
    if n_random is not None:
        outside = outside[torch.randperm(len(outside), generator=torch.Generator().manual_seed(seed))[:n_random]]
    random_directions = edit.directions(outside, node.index)
    one_hot = torch.zeros(pair.sparse.cfg.d_model)
    one_hot[node.index] = 1.0
    rows = []
    for strength in strengths:
        steered = edit.sparse_resid + strength * edit.delta * one_hot
        sparse_logits = pair.sparse(steered, start_at=edit.site, tokens=edit.source)
        dense = edit.dense_probability(pair, edit.decoder[:, node.index], strength)
        random = [edit.dense_probability(pair, d, strength) for d in random_directions] if strength else [dense]
        rows.append(
            {
                "strength": strength,
                "dense": dense,
                "random": sum(random) / len(random),  # at s = 0 no direction changes anything
                "sparse": target_probability(sparse_logits, edit.last, edit.target).mean().item(),
            }
        )
    table = pd.DataFrame(rows).set_index("strength")
    table.attrs.update(
        node=str(node),
        site=edit.site,
        prompts=len(edit.source),
        random_channels=outside.tolist(),
        random_outside_circuit=is_outside,
    )
    return table


@torch.no_grad()
def channel_ranking(
    pair: BridgedPair, node: Node, circuit: Circuit, batch: TaskBatch, strength: float = 1.0
) -> pd.DataFrame:
    """The node's edit at `strength` carried along *every* residual channel's decoder direction at its site, each
    rescaled to the node's own dense norm: per channel, the change in the dense model's mean p(candidate 0) and
    whether the circuit uses the channel, largest change first. Where the node ranks says whether its direction,
    not just any push of that size, is what moves the dense model."""
    edit = SteeringEdit.of(pair, node, batch)
    channels = torch.arange(pair.sparse.cfg.d_model)
    before = edit.dense_probability(pair, edit.decoder[:, node.index], 0.0)
    taken = residual_channels(circuit)
    rows = [
        {
            "channel": int(channel),
            "dense_change": edit.dense_probability(pair, direction, strength) - before,
            "in_circuit": int(channel) in taken,
            "steered": int(channel) == node.index,
        }
        for channel, direction in zip(channels, edit.directions(channels, node.index), strict=True)
    ]
    return pd.DataFrame(rows).set_index("channel").sort_values("dense_change", ascending=False)


def steered_rank(channels: pd.DataFrame) -> int:
    """Where the steered channel of a `channel_ranking` ranks among all the site's channels (1: it moves the dense
    model most)."""
    return list(channels.index).index(channels.index[channels.steered][0]) + 1


def ratios_over_draws(channels: pd.DataFrame, size: int = 8, draws: int = 1000, seed: int = 0) -> pd.Series:
    """From a `channel_ranking`: the ratio of the steered channel's change to a control of `size` channels drawn at
    random from those outside the circuit, over `draws` draws. Its spread is how much a drawn control's ratio is
    luck."""
    steered = channels.loc[channels.steered, "dense_change"].item()
    outside = torch.tensor(channels.loc[~channels.in_circuit & ~channels.steered, "dense_change"].to_numpy())
    generator = torch.Generator().manual_seed(seed)
    picks = torch.stack([torch.randperm(len(outside), generator=generator)[:size] for _ in range(draws)])
    return pd.Series((steered / outside[picks].mean(dim=1)).tolist(), name=f"ratio to {size} random channels")


def steering_effect(curve: pd.DataFrame) -> dict[str, float]:
    """The change in p(candidate 0) from s = 0 to the largest s, per column, and the steered effect over the
    random-channel control's (its magnitude, floored at 1e-6)."""
    change = {str(column): float(value) for column, value in (curve.iloc[-1] - curve.iloc[0]).items()}
    return {**change, "ratio_to_random": change["dense"] / max(abs(change["random"]), 1e-6)}


def steer_task(
    pair: BridgedPair, circuit: Circuit, pairs: PrunePairs | None = None, **curve_options
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole experiment for one pruned circuit of `pair.sparse`: rank its residual nodes on the pruning run's
    selection pairs (`node_effects`), then measure the best one's `steering_curve` on its test pairs, which chose
    nothing. `pairs` defaults to the pairs the circuit was pruned with."""
    if pairs is None:
        pairs = PrunePairs.of_circuit(circuit, pair.sparse)
    effects = node_effects(pair.sparse, circuit, pairs.selection)
    node = Node.parse(str(effects.index[0]))
    return effects, steering_curve(pair, node, circuit, pairs.test, **curve_options)


@torch.no_grad()
def channel_spread(model: SparseTransformer, batch: TaskBatch, top: Sequence[int] = (1, 4, 16)) -> pd.DataFrame:
    """How concentrated the contrast of `batch`'s pairs is at each residual site: the share of the squared change
    between the two prompts of a pair (summed over prompts and tokens) that the `top` largest channels hold, and
    how many channels change by more than half their own RMS. A feature held by one channel, like the paper's
    quote-type classifier, gives a top-1 share near 1; then one channel can carry the whole edit."""
    source, contrast, _ = contrast_rows(batch)
    rows = {}
    resids, contrast_resids = residual_stream(model, source)[0], residual_stream(model, contrast)[0]
    for site, resid, contrast_resid in zip(model.residual_sites, resids, contrast_resids, strict=True):
        change = contrast_resid - resid
        energy = change.pow(2).sum((0, 1)).sort(descending=True).values
        separation = change.pow(2).mean((0, 1)).sqrt() / resid.pow(2).mean((0, 1)).sqrt().clamp_min(1e-12)
        row = {f"top_{k}_share": (energy[:k].sum() / energy.sum().clamp_min(1e-12)).item() for k in top}
        rows[site] = {**row, "channels_separated": int((separation > 0.5).sum())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("site")


def save_steering(directory: str | Path, effects: pd.DataFrame, curve: pd.DataFrame) -> None:
    """Write a `steer_task` result to `directory` (created): the node ranking, the curve and the curve's attrs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(directory / NODES_FILE, effects.to_csv())
    write_text_atomic(directory / CURVE_FILE, curve.to_csv())
    write_text_atomic(directory / CURVE_INFO_FILE, json.dumps(curve.attrs, indent=2) + "\n")


def load_steering(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (node ranking, steering curve) that `save_steering` wrote to `directory`."""
    directory = Path(directory)
    missing = [name for name in (NODES_FILE, CURVE_FILE, CURVE_INFO_FILE) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} lacks {', '.join(missing)}; make it with "
            f"`python -m circuitlab.make_steering --out {directory.parent}`"
        )
    curve = pd.read_csv(directory / CURVE_FILE, index_col="strength")
    curve.attrs.update(json.loads((directory / CURVE_INFO_FILE).read_text()))
    return pd.read_csv(directory / NODES_FILE, index_col="node"), curve
