"""Circuit: node and edge conventions, ablation hooks, the standalone pruned model, save/load."""

import pytest
import torch

from circuitlab.circuit import (
    Circuit,
    Node,
    circuit_edges,
    edges_ablated,
    keep_or_ablate,
    load_seed_runs,
    node_shapes,
    parse_hook,
    silent_nodes,
    sublayer_order,
)
from circuitlab.config import SparseTransformerConfig
from circuitlab.masks import ablation_values
from circuitlab.model import NODE_LOCATIONS, SparseTransformer
from circuitlab.tasks import TaskBatch, task_loss

CFG = SparseTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=60, n_ctx=20, seed=2)


@pytest.fixture(scope="module")
def model() -> SparseTransformer:
    return SparseTransformer(CFG).eval()


@pytest.fixture(scope="module")
def batch() -> TaskBatch:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, CFG.d_vocab, (6, 12), generator=generator)
    return TaskBatch(
        tokens=tokens,
        last=torch.tensor([11, 9, 11, 7, 11, 10]),
        target=torch.tensor([3, 4, 3, 4, 3, 4]),
        alternative=torch.tensor([4, 3, 4, 3, 4, 3]),
    )


def sparse_circuit(model: SparseTransformer, batch: TaskBatch) -> Circuit:
    """A hand-made circuit: a few channels at every location of layer 1, nothing in layer 0."""
    masks = {name: torch.zeros(shape, dtype=torch.bool) for name, shape in node_shapes(model).items()}
    for name in masks:
        if name.startswith("blocks.1."):
            masks[name].view(-1)[:3] = True
    means = ablation_values(model, "task_mean", task_batch=batch)
    circuit = Circuit("hand_made", masks, means, "task_mean", 0.15, 0.0, 0.0, 0.0, edges=circuit_edges(model, masks))
    circuit.task_loss = circuit.loss(model, batch)
    circuit.uncalibrated_loss = circuit.loss(model, batch, calibrated=False)
    circuit.necessity_loss = circuit.loss(model, batch, invert=True)
    return circuit


def test_nodes_and_edges_follow_the_documented_convention(model, batch):
    with torch.no_grad():
        model.blocks[1].mlp.W_in[1, 2] = 0.0  # a pruned weight is no edge
    circuit = sparse_circuit(model, batch)
    assert circuit.n_nodes == len(NODE_LOCATIONS) * 3
    assert circuit.nodes_by_location == dict.fromkeys(circuit.nodes_by_location, 3)
    assert Node(1, "mlp_neuron", 2) in circuit.nodes
    # attn_read -> q, k, v (3 x 3 x 3), v -> attn_write (3 x 3), mlp_read -> neuron (3 x 3 - 1), neuron -> mlp_write
    assert circuit.n_edges == 27 + 9 + 8 + 9
    kinds = {(e.source.location, e.target.location) for e in circuit.edges}
    assert kinds == {
        ("attn_read", "q"),
        ("attn_read", "k"),
        ("attn_read", "v"),
        ("v", "attn_write"),
        ("mlp_read", "mlp_neuron"),
        ("mlp_neuron", "mlp_write"),
    }
    edge = next(e for e in circuit.edges if e.source == Node(1, "mlp_read", 0) and e.target.index == 1)
    assert edge.weight == pytest.approx(model.blocks[1].mlp.W_in[0, 1].item())
    assert len(circuit.qk_pairs) == 3  # q and k channels 0, 1, 2 of head 0 multiply in the score
    # attn_write 0..2 feed mlp_read 0..2 of the same layer through the residual stream
    assert len(circuit.residual_links) == 3


def test_nodes_are_ordered_along_the_forward_pass(model, batch):
    circuit = sparse_circuit(model, batch)
    assert [node.location for node in circuit.nodes] == [location for location in NODE_LOCATIONS for _ in range(3)]
    assert sublayer_order(Node(0, "mlp_write", 0)) < sublayer_order(Node(1, "attn_read", 0))


def test_ablation_hooks_and_standalone_model_agree(model, batch):
    circuit = sparse_circuit(model, batch)
    masked = model.run_with_hooks(batch.tokens, fwd_hooks=circuit.hooks())
    standalone = circuit.to_model(model)
    torch.testing.assert_close(standalone(batch.tokens), masked, rtol=0, atol=0)
    assert not torch.allclose(masked, model(batch.tokens))
    _, cache = standalone.run_with_cache(batch.tokens)  # caching still works on top of the permanent hooks
    kept = circuit.masks["blocks.0.mlp.hook_post"]
    assert not kept.any()
    expected = circuit.ablation_values["blocks.0.mlp.hook_post"].expand_as(cache["post", 0])
    torch.testing.assert_close(cache["post", 0], expected)
    torch.testing.assert_close(model(batch.tokens), model(batch.tokens))  # the original model is untouched
    assert circuit.loss(model, batch) == pytest.approx(circuit.loss(standalone, batch))


def test_task_mean_ablation_averages_only_real_positions(model, batch):
    means = ablation_values(model, "task_mean", task_batch=batch)
    _, cache = model.run_with_cache(batch.tokens)
    real = torch.arange(12)[None] <= batch.last[:, None]
    expected = cache["blocks.0.hook_attn_out"][real].mean(0)
    torch.testing.assert_close(means["blocks.0.hook_attn_out"], expected)
    zeros = ablation_values(model, "zero")
    assert all(v.abs().sum() == 0 for v in zeros.values())
    with pytest.raises(ValueError, match="needs pretraining_tokens"):
        ablation_values(model, "mean")


def test_save_and_load_round_trip(model, batch, tmp_path):
    circuit = sparse_circuit(model, batch)
    circuit.save(tmp_path / "c")
    loaded = Circuit.load(tmp_path / "c", model)
    assert loaded.nodes == circuit.nodes
    assert loaded.edges == circuit.edges
    assert loaded.summary() == circuit.summary()
    without_model = Circuit.load(tmp_path / "c")  # edges are recomputed from weights, not stored
    assert without_model.edges is None and without_model.summary() == circuit.summary()
    other = SparseTransformer(SparseTransformerConfig(**{**CFG.to_dict(), "seed": 3}))
    with pytest.raises(ValueError, match="pruned on a different model"):
        Circuit.load(tmp_path / "c", other)
    wider = SparseTransformer(SparseTransformerConfig(**{**CFG.to_dict(), "d_model": 48, "n_heads": 3}))
    with pytest.raises(ValueError, match="does not fit this model"):
        Circuit.load(tmp_path / "c", wider)
    torch.testing.assert_close(
        loaded.to_model(model)(batch.tokens), circuit.to_model(model)(batch.tokens), rtol=0, atol=0
    )
    with pytest.raises(FileExistsError, match="overwrite=True"):
        circuit.save(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="not a saved circuit"):
        Circuit.load(tmp_path / "missing")


def test_seed_runs_are_a_folder_and_its_seed_siblings_that_exist(model, batch, tmp_path):
    circuit = sparse_circuit(model, batch)
    for folder in ("runs", "runs_seed2", "other_seed1"):
        circuit.save(tmp_path / folder / circuit.task_name)
    runs = load_seed_runs(tmp_path / "runs")
    assert list(runs) == ["seed 0", "seed 2"]  # no runs_seed1; other_seed1 belongs to another folder
    assert all(list(circuits) == ["hand_made"] for circuits in runs.values())
    assert runs["seed 2"]["hand_made"].summary() == circuit.summary()


def test_ranked_nodes_put_the_highest_pruning_score_first(model, batch):
    circuit = sparse_circuit(model, batch)
    circuit.scores = {
        name: torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) for name, mask in circuit.masks.items()
    }
    ranked = circuit.ranked_nodes()
    assert sorted(ranked) == sorted(circuit.nodes)
    hook_of = {parse_hook(name): name for name in circuit.masks}
    scores = [circuit.scores[hook_of[n.layer, n.location]].flatten()[n.index].item() for n in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1


def test_node_explorer_lists_the_budgeted_nodes_and_shows_one(model, batch):
    from circuitlab.explorer import node_explorer

    circuit = sparse_circuit(model, batch)
    circuit.scores = {name: mask.float() for name, mask in circuit.masks.items()}
    box = node_explorer(model, {"hand_made": circuit}, {"hand_made": batch}, batch.tokens)
    task_picker, budget, node_picker = box.children[0].children
    assert budget.max == circuit.n_nodes and len(node_picker.options) == min(20, circuit.n_nodes)
    budget.value = 3
    assert [node for _, node in node_picker.options] == circuit.ranked_nodes()[:3]
    node_picker.value = node_picker.options[-1][1]  # redraws without error


def test_an_ablated_edge_carries_its_source_constant_and_is_undone(model, batch):
    circuit = sparse_circuit(model, batch)
    edge = next(e for e in circuit.edges if e.target.location == "mlp_neuron")
    block = model.blocks[edge.source.layer]
    read_name = NODE_LOCATIONS["mlp_read"].format(layer=edge.source.layer)
    mean = circuit.ablation_values[read_name][edge.source.index]
    captured = {}

    def capture(name):
        def hook(activation, hook):
            captured[name] = activation.detach().clone()

        return hook

    hooks = [(read_name, capture("read")), (f"blocks.{edge.source.layer}.mlp.hook_pre", capture("pre"))]
    model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
    read, pre = captured["read"], captured["pre"]
    before = {name: p.clone() for name, p in model.named_parameters()}
    with edges_ablated(model, [(edge.source, edge.target)], circuit.ablation_values):
        model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        assert block.mlp.W_in[edge.source.index, edge.target.index] == 0
    expected = pre[..., edge.target.index] - edge.weight * (read[..., edge.source.index] - mean)
    torch.testing.assert_close(captured["pre"][..., edge.target.index], expected, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # undone exactly


def test_removed_edges_survive_save_load_and_the_standalone_model(model, batch, tmp_path):
    circuit = sparse_circuit(model, batch)
    n_edges, whole = circuit.n_edges, circuit.to_model(model)
    writes = [e for e in circuit.edges if e.target.layer == 1 and e.target.location in ("attn_write", "mlp_write")]
    circuit.removed_edges = [(e.source, e.target) for e in writes[:5]]
    circuit.edges = circuit_edges(model, circuit.masks, circuit.removed_edges)
    assert circuit.n_edges == n_edges - 5
    locations = {e.target.location for e in writes[:5]}
    names = [NODE_LOCATIONS[location].format(layer=1) for location in locations]
    _, with_edges = whole.run_with_cache(batch.tokens, names_filter=names)
    _, without = circuit.to_model(model).run_with_cache(batch.tokens, names_filter=names)
    assert not any(torch.allclose(with_edges[name], without[name]) for name in names)  # the edges did something
    loaded = Circuit.load(circuit.save(tmp_path / "c"), model)
    assert loaded.removed_edges == circuit.removed_edges and loaded.n_edges == circuit.n_edges
    assert loaded.loss(model, batch) == pytest.approx(circuit.loss(model, batch), abs=1e-6)
    standalone = circuit.to_model(model)
    assert task_loss(standalone(batch.tokens), batch).item() == pytest.approx(circuit.loss(model, batch), abs=1e-5)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "circuit.json").write_text("{not json"), r"circuit\.json is not valid JSON"),
        (lambda d: (d / "circuit.json").write_text("[1, 2]"), r"circuit\.json is not a circuit file"),
        (lambda d: (d / "circuit.json").write_text('{"task_name": "x"}'), r"lacks \['ablated_model_loss'"),
        (lambda d: (d / "circuit.safetensors").write_bytes(b"\x00" * 10), r"circuit\.safetensors cannot be read"),
        (lambda d: (d / "circuit.safetensors").unlink(), r"circuit\.safetensors is missing"),
    ],
)
def test_a_damaged_circuit_is_refused_naming_the_file(model, batch, tmp_path, damage, message):
    directory = sparse_circuit(model, batch).save(tmp_path / "c")
    damage(directory)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        Circuit.load(directory, model)


def test_silent_nodes_are_those_of_sub_layers_whose_writes_are_all_ablated(model):
    masks = {name: torch.zeros(shape, dtype=torch.bool) for name, shape in node_shapes(model).items()}
    for name in ("blocks.0.attn.hook_q", "blocks.0.hook_attn_read", "blocks.0.hook_mlp_out"):
        masks[name].view(-1)[3] = True  # layer 0: attention writes nothing, the MLP writes one channel
    masks["blocks.1.mlp.hook_post"][7] = True
    masks["blocks.1.hook_mlp_out"][5] = True  # layer 1: a neuron and the MLP channel it may write
    silent = {name: [int(i) for i in mask.view(-1).nonzero()] for name, mask in silent_nodes(masks).items()}
    assert {name: nodes for name, nodes in silent.items() if nodes} == {
        "blocks.0.attn.hook_q": [3],
        "blocks.0.hook_attn_read": [3],
    }
    means = ablation_values(model, "mean", pretraining_tokens=torch.randint(1, CFG.d_vocab, (4, 12)))
    quiet = {name: mask & ~silent_nodes(masks)[name] for name, mask in masks.items()}
    tokens = torch.randint(1, CFG.d_vocab, (2, 8), generator=torch.Generator().manual_seed(0))

    def logits(node_masks: dict[str, torch.Tensor]) -> torch.Tensor:
        def hook(name: str):
            keep = node_masks[name].float()
            return lambda activation, hook: keep_or_ablate(activation, keep, means[name])

        with torch.no_grad():
            return model.run_with_hooks(tokens, fwd_hooks=[(name, hook(name)) for name in node_masks])

    assert torch.equal(logits(masks), logits(quiet))  # ablating the silent nodes too changes no output


def test_circuit_loss_skips_sub_layers_it_ablates_whole_with_the_same_losses(model, batch, monkeypatch):
    circuit = sparse_circuit(model, batch)  # nothing kept in layer 0: both its sub-layers write constants
    edge = next(e for e in circuit.edges if e.target.location == "mlp_neuron")
    circuit.removed_edges = [(edge.source, edge.target)]
    inner_hook_ran = []
    model.add_hook("blocks.0.attn.hook_q", lambda activation, hook: inner_hook_ran.append(hook.name))
    skipped = [circuit.loss(model, batch, calibrated=False)]
    model.reset_hooks()
    assert inner_hook_ran == []  # layer 0's attention was not computed for the circuit
    skipped.append(circuit.loss(model, batch, invert=True, calibrated=False))
    every_hook = set(circuit.masks)
    monkeypatch.setattr("circuitlab.circuit.skippable", lambda keep, values: ({}, every_hook))
    computed = [circuit.loss(model, batch, invert=invert, calibrated=False) for invert in (False, True)]
    assert skipped == computed  # to the bit, the circuit and its complement alike
    assert skipped[0] != skipped[1]
