"""Look at single nodes: what they do on task prompts and which real code makes them fire."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from torch import Tensor

from circuitlab.circuit import Circuit, Node
from circuitlab.model import HEAD_LOCATIONS, NODE_LOCATIONS, SparseTransformer
from circuitlab.tasks import TaskBatch


def node_activations(model: SparseTransformer, node: Node, tokens: Tensor) -> Tensor:
    """The node's activation at every position of `tokens` ([batch, pos])."""
    hook_name = NODE_LOCATIONS[node.location].format(layer=node.layer)
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    activation = cache[hook_name]
    if node.location in HEAD_LOCATIONS:
        activation = activation.flatten(-2)
    return activation[..., node.index]


@torch.no_grad()
def top_activating_snippets(
    model: SparseTransformer, node: Node, tokens: Tensor, k: int = 5, context: int = 12
) -> list[tuple[float, str]]:
    """The k positions of `tokens` where the node is largest in magnitude, each with the code before it;
    the token at that position is wrapped in ⟦ ⟧."""
    activation = node_activations(model, node, tokens)
    top = activation.abs().flatten().topk(k).indices
    snippets = []
    for flat in top.tolist():
        row, pos = divmod(flat, tokens.shape[1])
        before = model.to_string(tokens[row, max(0, pos - context) : pos])
        snippets.append((activation[row, pos].item(), f"{before}⟦{model.to_string(tokens[row, pos : pos + 1])}⟧"))
    return snippets


@torch.no_grad()
def node_explorer(
    model: SparseTransformer, circuits: dict[str, Circuit], batches: dict[str, TaskBatch], corpus_tokens: Tensor
) -> widgets.VBox:
    """Pick a task, a budget (how many of its circuit's nodes to list, highest pruning score first) and a
    node: see the node's activation at the last position of the task's prompts (split by the correct
    answer) and the real code that activates it most."""
    task_picker = widgets.Dropdown(options=sorted(circuits), description="task")
    budget = widgets.IntSlider(value=20, min=1, max=20, description="budget")
    node_picker = widgets.Dropdown(description="node")
    output = widgets.Output()

    def refresh_budget(*_):
        budget.max = max(1, circuits[task_picker.value].n_nodes)
        budget.value = min(20, budget.max)
        refresh_nodes()

    def refresh_nodes(*_):
        ranked = circuits[task_picker.value].ranked_nodes()[: budget.value]
        node_picker.options = [(str(node), node) for node in ranked]

    def show(*_):
        output.clear_output(wait=True)
        if node_picker.value is None:
            return
        node, batch = node_picker.value, batches[task_picker.value]
        activation = node_activations(model, node, batch.tokens)[torch.arange(len(batch)), batch.last]
        with output:
            fig, ax = plt.subplots(figsize=(6, 2.5))
            for target in batch.target.unique().tolist():
                label = model.to_string([target])
                ax.hist(activation[batch.target == target].numpy(), bins=30, alpha=0.6, label=f"answer {label!r}")
            ax.set(title=f"{node} at the last prompt position", xlabel="activation")
            ax.legend()
            plt.show()
            for value, snippet in top_activating_snippets(model, node, corpus_tokens):
                print(f"{value:+.3f}  {snippet!r}")

    task_picker.observe(refresh_budget, names="value")
    budget.observe(refresh_nodes, names="value")
    node_picker.observe(show, names="value")
    refresh_budget()
    box = widgets.VBox([widgets.HBox([task_picker, budget, node_picker]), output])
    display(box)
    show()
    return box
