"""Figures the chapters share: circuit drawings, training and pruning curves, circuit-size comparisons."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import networkx as nx
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter
from torch import Tensor

from circuitlab.circuit import Circuit, Node, sublayer_order
from circuitlab.model import NODE_LOCATIONS
from circuitlab.paths import FIGURES_DIR

# One colour per node location, in `NODE_LOCATIONS`' order: blues for attention's residual read and write,
# oranges for q, k, v, greens for the MLP's read, neurons and write.
COLORS_IN_LOCATION_ORDER = ("#9ecae1", "#fd8d3c", "#fdae6b", "#e6550d", "#3182bd", "#a1d99b", "#31a354", "#006d2c")
LOCATION_COLORS = dict(zip(NODE_LOCATIONS, COLORS_IN_LOCATION_ORDER, strict=True))


def circuit_graph(circuit: Circuit) -> nx.DiGraph:
    """The circuit as a graph: weight edges (kind "weight"), q·k pairs ("qk") and residual links ("residual")."""
    if circuit.edges is None:
        raise ValueError(
            f"The {circuit.task_name} circuit was loaded without its model, so it has no edges to draw: "
            "load it with Circuit.load(path, model)."
        )
    graph: nx.DiGraph = nx.DiGraph()
    for node in circuit.nodes:
        graph.add_node(node, location=node.location, layer=node.layer)
    for edge in circuit.edges:
        graph.add_edge(edge.source, edge.target, weight=edge.weight, kind="weight")
    for q, k in circuit.qk_pairs:
        graph.add_edge(k, q, weight=0.0, kind="qk")
    for write, read in circuit.residual_links:
        graph.add_edge(write, read, weight=0.0, kind="residual")
    return graph


def draw_circuit(circuit: Circuit, ax: plt.Axes | None = None, title: str | None = None) -> plt.Axes:
    """Layers left to right, one column per node location, colour = location, edge width = |weight|,
    red/blue = positive/negative weight; dashed grey = residual links, dotted = q·k pairs."""
    graph = circuit_graph(circuit)
    if ax is None:
        width = max(6, 0.6 * len({sublayer_order(n) for n in graph.nodes}) + 2)
        _, ax = plt.subplots(figsize=(width, 5))
    columns: dict[float, list[Node]] = {}
    for node in graph.nodes:
        columns.setdefault(sublayer_order(node), []).append(node)
    xs = {order: i for i, order in enumerate(sorted(columns))}
    positions = {}
    for order, nodes in columns.items():
        for rank, node in enumerate(sorted(nodes, key=lambda n: n.index)):
            positions[node] = (xs[order], rank - (len(nodes) - 1) / 2)

    weights = [abs(d["weight"]) for *_, d in graph.edges(data=True) if d["kind"] == "weight"]
    scale = max(weights, default=1.0) or 1.0
    for kind, style in (("residual", ":"), ("qk", "--")):
        edges = [(u, v) for u, v, d in graph.edges(data=True) if d["kind"] == kind]
        nx.draw_networkx_edges(
            graph, positions, edgelist=edges, style=style, edge_color="grey", alpha=0.6, ax=ax, arrows=False
        )
    weight_edges = [(u, v, d["weight"]) for u, v, d in graph.edges(data=True) if d["kind"] == "weight"]
    nx.draw_networkx_edges(
        graph,
        positions,
        edgelist=[(u, v) for u, v, _ in weight_edges],
        width=[0.5 + 3 * abs(w) / scale for *_, w in weight_edges],
        edge_color=["#d62728" if w > 0 else "#1f77b4" for *_, w in weight_edges],
        alpha=0.8,
        ax=ax,
        arrows=False,
    )
    nx.draw_networkx_nodes(
        graph, positions, node_color=[LOCATION_COLORS[n.location] for n in graph.nodes], node_size=160, ax=ax
    )
    nx.draw_networkx_labels(graph, positions, labels={n: str(n.index) for n in graph.nodes}, font_size=6, ax=ax)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([_column_label(columns[order][0]) for order in sorted(columns)], rotation=60, fontsize=7)
    ax.tick_params(left=False, labelleft=False)
    for location, color in LOCATION_COLORS.items():
        ax.scatter([], [], color=color, label=location)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    summary = circuit.summary()
    ax.set_title(
        title
        or f"{circuit.task_name}: {summary['nodes']} nodes, {summary['edges']} edges, loss {summary['task_loss']:.3f}"
    )
    return ax


def plot_edges_vs_loss(table: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Axes:
    """Circuit edges against held-out loss, one line per method (a `controls.edges_vs_loss` table; the paper's
    Figure 31): further left at the same height is a smaller circuit for the same loss. Dotted: the targets."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4))
    for method, rows in table.groupby("method", sort=False):
        rows = rows.sort_values("target_loss")
        ax.plot(rows.edges, rows.test_loss, "o-", label=f"{method} pruning")
    for target in table.target_loss.unique():
        ax.axhline(target, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("symlog", linthresh=1)  # symlog: a circuit of 0 edges stays on the plot
    ax.set_yscale("log")
    ax.set_xlabel("edges in the circuit")
    ax.set_ylabel("task loss on held-out pairs")
    ax.legend()
    return ax


def plot_search_trials(trials: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Axes:
    """A pruner search's trials (a `search` trials.csv), in the order they were proposed: each trial's edges by
    outcome (cleaned up, given up, or missing the target on its selection pairs), the chosen trial starred, and
    the fewest edges of a cleaned-up feasible trial so far as a step line."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    trials = trials.sort_values("trial")
    edges = trials.edges.clip(lower=1)  # a circuit of 0 edges stays on the log axis
    cleaned_up = trials.feasible & ~trials.given_up
    outcomes = {
        "cleaned up": (cleaned_up, "o"),
        "given up (collapsed masks)": (trials.feasible & trials.given_up, "x"),
        "missed the target": (~trials.feasible, "v"),
    }
    for label, (rows, marker) in outcomes.items():
        if rows.any():
            ax.scatter(trials.trial[rows], edges[rows], marker=marker, label=label)
    best = edges.where(cleaned_up).cummin().ffill()
    ax.step(trials.trial, best, where="post", color="grey", lw=0.8, label="fewest edges so far")
    ax.scatter(trials.trial[trials.chosen], edges[trials.chosen], marker="*", s=200, color="gold", label="chosen")
    ax.set(yscale="log", xlabel="trial", ylabel="circuit edges")
    ax.legend(fontsize=7)
    return ax


def _column_label(node: Node) -> str:
    return f"L{node.layer} {node.location}"


def save_figure(fig: plt.Figure, name: str, directory: str | Path | None = None) -> Path:
    """Save under figures/ with a stable name (PNG, 150 dpi)."""
    directory = Path(directory or FIGURES_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def plot_pruning_history(history: list[dict]) -> plt.Figure:
    """Mask training: the task loss on each step's fresh pairs, and the nodes kept (score > 0)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    steps = [row["step"] for row in history]
    axes[0].plot(steps, [row["task_loss"] for row in history], lw=0.8)
    axes[0].set(title="task loss while pruning (training pairs)", xlabel="step", yscale="log")
    axes[1].plot(steps, [row["n_kept"] for row in history])
    axes[1].set(title="nodes kept (score > 0)", xlabel="step", yscale="log")
    return fig


def plot_loss_vs_nodes(
    ks: list[int], losses: list[float], target: float, marks: dict[str, int], title: str, ax: plt.Axes | None = None
) -> plt.Axes:
    """Held-out loss keeping the top-k nodes, with the target and labelled vertical marks (e.g. the search's k)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ks, losses, "o-", ms=3)
    ax.axhline(target, ls="--", color="grey", label=f"target {target}")
    for (label, k), color in zip(marks.items(), ("red", "green", "purple"), strict=False):
        ax.axvline(k, ls=":", color=color, label=f"{label}: {k}")
    ax.set(xscale="symlog", xlabel="nodes kept (top by score)", ylabel="held-out task loss", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_size_comparison(table, ratio: float, target: float, ax: plt.Axes | None = None) -> plt.Axes:
    """Edges of each task's circuit in the sparse (x) and dense (y) model, for the tasks both solve."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    solved = table[table.solved]
    ax.scatter(solved.sparse_edges.clip(lower=1), solved.dense_edges.clip(lower=1))
    for row in solved.itertuples():
        ax.annotate(row.task, (max(row.sparse_edges, 1), max(row.dense_edges, 1)), fontsize=7)
    limit = [1, max(solved.dense_edges.max(), solved.sparse_edges.max(), 10) * 2] if len(solved) else [1, 10]
    ax.plot(limit, limit, "k--", lw=0.8, label="equal size")
    ax.set(xscale="log", yscale="log", xlabel="sparse model: circuit edges", ylabel="dense model: circuit edges")
    ax.set_title(f"circuit size at task loss {target} (dense / sparse: {ratio:.1f}x)")
    ax.legend()
    return ax


def plot_size_vs_target(summary: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Axes:
    """The paper's Figure 2: geometric-mean circuit edges (x) against the target loss (y), one line per model
    (a `compare.size_vs_target` summary); each point is labelled with the number of tasks it averages over."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4))
    for column in [c for c in summary.columns if c.endswith(" edges")]:
        ax.plot(summary[column], summary.index, "o-", label=column.removesuffix(" edges"))
        for target, edges, n in zip(summary.index, summary[column], summary.tasks, strict=True):
            ax.annotate(f"{n}", (edges, target), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="circuit edges (geometric mean over tasks)", ylabel="target loss")
    ax.set_title("circuit size against target loss (labels: tasks averaged)")
    ax.legend()
    return ax


def plot_frontier(
    points: pd.DataFrame, edges: str, spread: pd.DataFrame | None = None, ax: plt.Axes | None = None
) -> plt.Axes:
    """The paper's Figure 3: validation loss (x) against geometric-mean circuit edges (y, column `edges` of a
    `frontier.frontier_points` table); colour = total parameters (one per width), marker area = nonzero
    parameters, squares = dense baselines, dotted lines join models of equal nonzero weights. With `spread` (a
    `frontier.pruning_spread` table) its model carries an error bar from its smallest to its largest seed,
    rescaled to this plot's value for it. Down and left is better."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    widths = sorted(points.width.unique())
    colours = dict(
        zip(widths, plt.cm.viridis([i / max(1, len(widths) - 1) * 0.85 for i in range(len(widths))]), strict=True)
    )
    area = 300 * points.nonzero_params / points.nonzero_params.max()
    columns = (points.model, points.width, points.dense, points.val_loss, points[edges], area)
    for model, width, dense, loss, y, size in zip(*columns, strict=True):
        marker = "s" if dense else "o"
        ax.scatter(loss, y, s=size, color=colours[width], marker=marker, edgecolor="black", linewidth=0.5, alpha=0.85)
        ax.annotate(model, (loss, y), textcoords="offset points", xytext=(6, 3), fontsize=7)
    for _, same_budget in points[~points.dense].groupby("budget"):
        same_budget = same_budget.sort_values("width")
        ax.plot(same_budget.val_loss, same_budget[edges], ":", color="grey", lw=0.8)
    if spread is not None and not spread.empty:
        for model, seeds in spread.groupby("model"):
            at = points[points.model == model]
            if len(at):
                y, scale = float(at[edges].iloc[0]), float(at[edges].iloc[0]) / seeds.edges.iloc[0]
                low, high = seeds.edges.min() * scale, seeds.edges.max() * scale
                ax.errorbar(at.val_loss, [y], yerr=[[y - low], [high - y]], color="black", capsize=3, lw=1)
    for width in widths:
        ax.scatter(
            [],
            [],
            color=colours[width],
            label=f"width {width} ({points[points.width == width].total_params.iloc[0]:,} params)",
        )
    ax.set(yscale="log", xlabel="validation loss on held-out real code", ylabel="circuit edges (geometric mean)")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 30, 100, 600: not 3 x 10^1
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.legend(fontsize=7)
    return ax


def plot_last_token_attention(model, tokens: Tensor, layer: int | None = None) -> plt.Figure:
    """Where each head of `layer` (default: the last) attends from the last position of one prompt
    (`tokens`: [1, pos]), read from a TransformerLens `ActivationCache`."""
    layer = model.cfg.n_layers - 1 if layer is None else layer
    _, cache = model.run_with_cache(tokens)
    pattern = cache["pattern", layer][0, :, -1].numpy()  # [head, key_pos]
    labels = model.to_str_tokens(tokens[0])
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.imshow(pattern, aspect="auto", cmap="Blues")
    ax.set_xticks(range(len(labels)), [repr(t)[1:-1] for t in labels], rotation=90, fontsize=7)
    ax.set(ylabel="head", title=f"layer {layer}: attention from the last token")
    return fig


# -------------------------------------------------------------------------------------------- training (01)


def plot_schedules(schedule) -> plt.Figure:
    """The weight-sparse recipe over a run (a `train.schedule_table`): L0 annealed down from dense, and the
    "sharkfin" learning rate, small while the model is dense and growing as weights are removed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    axes[0].plot(schedule["step"], schedule["l0"])
    axes[0].set(title="fraction of weights kept (L0)", xlabel="step", yscale="log")
    axes[1].plot(schedule["step"], schedule["lr"])
    axes[1].set(title="learning rate (sharkfin)", xlabel="step")
    return fig


def plot_training_curves(runs: dict) -> plt.Figure:
    """Loss, L0, learning rate and dead MLP neurons against tokens seen, one line per run: `runs` maps a label to
    a run's `metrics.csv` as a DataFrame (validation loss and dead neurons only on the rows that evaluated)."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3))
    for label, frame in runs.items():
        evaluated = frame.dropna(subset=["val_loss"])
        axes[0].plot(frame["tokens"], frame["train_loss"], label=f"{label} train", alpha=0.6)
        axes[0].plot(evaluated["tokens"], evaluated["val_loss"], "o-", label=f"{label} val")
        axes[1].plot(frame["tokens"], frame["l0"], label=label)
        axes[2].plot(frame["tokens"], frame["lr"], label=label)
        axes[3].plot(evaluated["tokens"], evaluated["dead_neurons"], "o-", label=label)
    axes[0].set(title="loss (nats/token)", xlabel="tokens")
    axes[1].set(title="L0 (hidden matrices)", xlabel="tokens", yscale="log")
    axes[2].set(title="learning rate", xlabel="tokens")
    axes[3].set(title="dead MLP neurons (fraction)", xlabel="tokens")
    for ax in axes:
        ax.legend(fontsize=7)
    return fig


def plot_weight_sparsity(weight, name: str, unit: str = "neuron", max_units: int = 128) -> plt.Figure:
    """A [d_model, units] weight matrix (a torch tensor, e.g. `mlp.W_in`): the histogram of all its entries (log
    count: pruned weights are a spike of exact zeros) and which entries are nonzero, for the first `max_units`."""
    weight = weight.detach().cpu()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    axes[0].hist(weight.flatten().numpy(), bins=100, log=True)
    axes[0].set(title=f"{name}: all weights (log count)")
    shown = weight[:, :max_units]
    axes[1].imshow((shown != 0).numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
    axes[1].set(title=f"nonzero pattern (first {shown.shape[1]} {unit}s)", xlabel=unit, ylabel="residual channel")
    return fig


def plot_bridge_report(report: pd.DataFrame) -> plt.Figure:
    """Per residual site: the bridges' reconstruction error (encoder and decoder NMSE) and the KL(dense || hybrid)
    of the passes that switch model there, with the whole sparse model's KL for scale (a `bridge_report`)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    labels = [site.removeprefix("blocks.").replace(".hook_resid_", " ") for site in report.index]
    report[["nmse_encoder", "nmse_decoder"]].set_axis(labels).plot.bar(ax=axes[0], rot=45)
    axes[0].set(title="reconstruction: NMSE per site", ylabel="NMSE (1 = predicting the mean)")
    hybrid = report[["kl_dense_then_sparse", "kl_sparse_then_dense"]].set_axis(labels)
    hybrid.plot.bar(ax=axes[1], rot=45)
    axes[1].axhline(report["kl_sparse"].iloc[0], color="grey", ls="--", label="sparse model alone")
    axes[1].set(title="hybrid passes: KL(dense || hybrid) per site", ylabel="nats per token")
    axes[1].legend(fontsize=8)
    return fig


def plot_steering_curve(curve: pd.DataFrame, token: str, ax: plt.Axes | None = None) -> plt.Axes:
    """p(`token`) against steering strength (a `steering.steering_curve`): the dense model steered through the
    bridge, the random-channel control, and the same edit in the sparse model (the paper's Figure 9)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4))
    styles = {"dense": ("o-", "dense, steered through the bridge"), "random": ("s--", "dense, random channel")}
    styles["sparse"] = ("^:", "sparse model, same edit")
    for column, (style, label) in styles.items():
        ax.plot(curve.index, curve[column], style, label=label)
    ax.set(yscale="log", xlabel="steering strength s", ylabel=f"p({token.strip()}) at the last token")
    ax.set_title(f"steering node {curve.attrs.get('node', '')}")
    ax.legend(fontsize=8)
    return ax


def plot_channel_ranking(channels: pd.DataFrame, token: str, ax: plt.Axes | None = None) -> plt.Axes:
    """The change in the dense model's p(`token`) when the steering edit is carried along each residual channel at
    the site (a `steering.channel_ranking`), largest first: the steered channel, the circuit's other channels and
    those outside it, with the outside channels' mean (the random-channel control)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    rank = range(1, len(channels) + 1)
    colours = ["C3" if s else "C0" if c else "C7" for s, c in zip(channels.steered, channels.in_circuit, strict=True)]
    ax.bar(rank, channels.dense_change, color=colours, width=1.0)
    outside = channels.dense_change[~channels.in_circuit & ~channels.steered]
    control = ax.axhline(outside.mean(), color="k", linestyle="--", linewidth=1)
    kinds = {"C3": "steered channel", "C0": "other circuit channels", "C7": "channels outside the circuit"}
    handles = [Patch(color=colour, label=label) for colour, label in kinds.items()]
    ax.legend([*handles, control], [*kinds.values(), "mean outside the circuit (the control)"], fontsize=8)
    ax.set(xlabel="channel, by rank", ylabel=f"change in dense p({token.strip()}) at s = 1")
    return ax
