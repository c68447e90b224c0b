"""The pruner on a model whose circuit is known, with decoys, and the controls and baseline around it.

The model is set by hand (one layer, 16 residual channels, 4 heads of 4 dims, 16 ReLU neurons; no AbsTopK,
attention sinks or bigram table). A prompt is BOS, filler tokens with one key token (A or B) among them, and
the query token Q last; A is answered X and B is answered Y. The circuit, ten nodes:

    embedding: KEY marks A and B, IDENTITY is +1 on A and -1 on B (and ±1 on fillers, so only attention
    that finds the key token can read it), QUERY marks Q, ANCHOR is a large constant that steadies the norms
    head 3: q reads QUERY, k reads KEY, v reads IDENTITY, and writes it to COPIED at the last position
    neuron 15: ReLU(2 COPIED + 6), written to ANSWER (centred by the MLP's output bias)
    unembedding: reads ANSWER only

Decoys: heads 0-2 and neurons 0-14 read filler features and write channels nothing reads; head 2 and
neurons 11-14 also write a small signal into ANSWER. Every decoy and every known node sits *earlier* in hook
order than some known node of its location, so a ranking that fell back to hook order would keep decoys first.

`backup_path_model` adds a second, weaker path for stage 5 (necessity): head 1 finds the key token through
channels of its own (KEY2, IDENTITY2, QUERY2) and writes its identity straight into ANSWER, seven nodes.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from circuitlab import controls, tasks
from circuitlab.circuit import Circuit, node_shapes
from circuitlab.config import SparseTransformerConfig
from circuitlab.masks import MaskedEvaluator, NodeMasks, ablation_values
from circuitlab.model import SparseTransformer
from circuitlab.plotting import plot_edges_vs_loss
from circuitlab.prune import PruneConfig, PrunePairs, prune, unit_attribution
from circuitlab.tasks import TaskBatch

PAD, A, B, Q, X, Y = range(6)
FILLERS = tuple(range(6, 16))
UNREAD = tuple(range(6))  # residual channels only decoys write and nothing reads
FEATURES = tuple(range(6, 10))  # filler-token features the decoys read
ANCHOR, KEY, IDENTITY, QUERY, COPIED, ANSWER = range(10, 16)
HEAD, NEURON = 3, 15
BACKUP_HEAD, KEY2, IDENTITY2, QUERY2 = 1, UNREAD[2], UNREAD[3], UNREAD[4]
BACKUP_STRENGTH = 0.5  # its weight into ANSWER: alone it moves the answer's logit by a quarter of the main path
NOISE = 0.1  # the weight with which some decoys write into ANSWER

CONFIG = SparseTransformerConfig(
    n_layers=1,
    d_model=16,
    n_heads=4,
    d_head=4,
    d_mlp=16,
    d_vocab=16,
    n_ctx=16,
    act_fn="relu",
    attn_sink=False,
    bigram_table=False,
    afrac=None,
)

KNOWN = {
    "blocks.0.hook_attn_read": [KEY, IDENTITY, QUERY],
    "blocks.0.attn.hook_q": [HEAD * CONFIG.d_head],
    "blocks.0.attn.hook_k": [HEAD * CONFIG.d_head],
    "blocks.0.attn.hook_v": [HEAD * CONFIG.d_head],
    "blocks.0.hook_attn_out": [COPIED],
    "blocks.0.hook_mlp_read": [COPIED],
    "blocks.0.mlp.hook_post": [NEURON],
    "blocks.0.hook_mlp_out": [ANSWER],
}
KNOWN_NODES = {(name, index) for name, indices in KNOWN.items() for index in indices}
BACKUP_NODES = {
    *(("blocks.0.hook_attn_read", channel) for channel in (KEY2, IDENTITY2, QUERY2)),
    *((f"blocks.0.attn.hook_{x}", BACKUP_HEAD * CONFIG.d_head) for x in "qkv"),
    ("blocks.0.hook_attn_out", ANSWER),
}

STEPS = 100
PAPER_CENTRE = {"lr": 3e-3, "penalty": 1e-4}  # the paper's search centre (its Table 2) for these two
SPREAD_INIT = {"init_mean": 0.5, "init_std": 0.2, "steps": 300}  # scores cross zero at different steps


@torch.no_grad()
def known_circuit_model(seed: int = 0) -> SparseTransformer:
    """The model of the module docstring; `seed` draws the decoys' weights and the fillers' features."""
    model = SparseTransformer(CONFIG)
    for param in model.parameters():
        if param.ndim > 1:
            param.zero_()
    generator = torch.Generator().manual_seed(seed)

    def draw(scale: float = 1.0) -> float:
        return scale * torch.randn((), generator=generator).item()

    W_E, attn, mlp = model.embed.W_E, model.blocks[0].attn, model.blocks[0].mlp
    W_E[:, ANCHOR] = 3.0
    W_E[[A, B], KEY] = 1.0
    W_E[A, IDENTITY], W_E[B, IDENTITY], W_E[Q, QUERY] = 1.0, -1.0, 1.0
    for i, token in enumerate(FILLERS):
        W_E[token, IDENTITY] = (-1.0) ** i
        W_E[token, list(FEATURES)] = torch.randn(len(FEATURES), generator=generator)
    attn.W_Q[HEAD, QUERY, 0], attn.W_K[HEAD, KEY, 0] = 4.0, 4.0
    attn.W_V[HEAD, IDENTITY, 0], attn.W_O[HEAD, 0, COPIED] = 1.0, 2.0
    mlp.W_in[COPIED, NEURON], mlp.b_in[NEURON] = 2.0, 6.0
    mlp.W_out[NEURON, ANSWER], mlp.b_out[ANSWER] = 1.0, -6.0
    model.unembed.W_U[ANSWER, X], model.unembed.W_U[ANSWER, Y] = 2.0, -2.0
    for head in range(HEAD):
        for e in range(2):
            attn.W_Q[head, FEATURES[head], e] = draw(2.0)
            attn.W_K[head, FEATURES[head + 1], e] = draw(2.0)
            attn.W_V[head, FEATURES[(head + 2) % 4], e] = 1.0 + abs(draw())
            attn.W_O[head, e, UNREAD[2 * head + e]] = 1.5
    attn.W_O[2, 0, ANSWER] = NOISE
    for neuron in range(NEURON):
        mlp.W_in[FEATURES[neuron % 4], neuron] = draw(2.0)
        mlp.W_in[FEATURES[(neuron + 1) % 4], neuron] = draw(2.0)
        mlp.W_out[neuron, UNREAD[neuron % 6]] = 1.0
        if neuron >= 11:
            mlp.W_out[neuron, ANSWER] = math.copysign(NOISE, draw())
    return model


@torch.no_grad()
def backup_path_model() -> SparseTransformer:
    """The known circuit's model with head 1's decoy replaced by the weaker second path of the module docstring."""
    model = known_circuit_model()
    W_E, attn = model.embed.W_E, model.blocks[0].attn
    for W in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O):
        W[BACKUP_HEAD] = 0.0
    W_E[[A, B], KEY2] = 1.0
    W_E[A, IDENTITY2], W_E[B, IDENTITY2], W_E[Q, QUERY2] = 1.0, -1.0, 1.0
    for i, token in enumerate(FILLERS):
        W_E[token, IDENTITY2] = (-1.0) ** i
    attn.W_Q[BACKUP_HEAD, QUERY2, 0], attn.W_K[BACKUP_HEAD, KEY2, 0] = 4.0, 4.0
    attn.W_V[BACKUP_HEAD, IDENTITY2, 0], attn.W_O[BACKUP_HEAD, 0, ANSWER] = 1.0, BACKUP_STRENGTH
    return model


def known_circuit_batch(n_pairs: int, seed: int, nonsense: bool = False) -> TaskBatch:
    """Contrast pairs (the same prompt with A, then with B, as its key token; lengths 6-16). With `nonsense`, a
    pair's answers are swapped when its prompts have an odd number of tokens, which the model does not track."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, CONFIG.n_ctx + 1, (n_pairs,), generator=generator)
    first = torch.tensor(FILLERS)[torch.randint(len(FILLERS), (n_pairs, CONFIG.n_ctx), generator=generator)]
    rows = torch.arange(n_pairs)
    first[:, 0] = PAD
    first[rows, 1 + (torch.rand(n_pairs, generator=generator) * (lengths - 2)).long()] = A
    first[rows, lengths - 1] = Q
    first[torch.arange(CONFIG.n_ctx)[None] >= lengths[:, None]] = PAD
    second = torch.where(first == A, B, first)
    target = torch.tensor([X, Y]).repeat(n_pairs)
    if nonsense:
        target = torch.where((lengths % 2 == 1).repeat_interleave(2), X + Y - target, target)
    last = (lengths - 1).repeat_interleave(2)
    return TaskBatch(torch.stack([first, second], 1).flatten(0, 1), last, target, X + Y - target)


def known_circuit_pairs(nonsense: bool = False, steps: int = STEPS, seed: int = 0) -> PrunePairs:
    n_train = steps * PruneConfig.pairs_per_step
    batches = (known_circuit_batch(n, seed + i, nonsense) for i, n in enumerate((n_train, 200, 200)))
    return PrunePairs(*batches)


PRETRAINING = torch.randint(CONFIG.d_vocab, (64, CONFIG.n_ctx), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def model() -> SparseTransformer:
    return known_circuit_model()


@pytest.fixture(scope="module")
def pairs() -> PrunePairs:
    return known_circuit_pairs()


def run_pruner(model, pairs, ablation: str, **settings):
    settings = {"steps": STEPS, "ablation": ablation, **settings}
    return prune(model, pairs=pairs, pretraining_tokens=PRETRAINING, progress=False, **settings)


ALL_NODES = {
    (name, i) for name, shape in node_shapes(SparseTransformer(CONFIG)).items() for i in range(math.prod(shape))
}


def node_set(masks: dict[str, torch.Tensor]) -> set[tuple[str, int]]:
    return {(name, int(i)) for name, mask in masks.items() for i in mask.flatten().nonzero().flatten()}


def masks_of(model: SparseTransformer, ablation: str, nodes: set[tuple[str, int]]) -> tuple[NodeMasks, dict]:
    """NodeMasks with the ablation constants of the pruner and float node masks keeping exactly `nodes`."""
    means = ablation_values(model, ablation, PRETRAINING)
    masks = PruneConfig(ablation=ablation).new_masks(model, means)
    keep = {name: torch.zeros(mean.shape) for name, mean in means.items()}
    for name, index in nodes:
        keep[name].view(-1)[index] = 1.0
    return masks, keep


# ------------------------------------------------------------------------------ the ground truth holds


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_the_known_nodes_do_the_task_and_each_is_needed(model, pairs, ablation):
    masks, keep = masks_of(model, ablation, KNOWN_NODES)
    test = MaskedEvaluator(model, masks, pairs.test)
    assert test.loss(None) < 1e-3  # the full model is confident
    assert test.fit(keep)[0] < 1e-3  # the ten nodes alone do the task (calibrated, as the pruner measures)
    for node in sorted(KNOWN_NODES):
        assert test.fit(masks_of(model, ablation, KNOWN_NODES - {node})[1])[0] > 0.15, f"{node} is not needed"


def test_the_noisy_decoys_move_the_answer_a_little(model, pairs):
    """Head 2 and neurons 11-14 write into ANSWER: ablating them changes the margin, by far less than the task."""
    noisy = {("blocks.0.hook_attn_out", ANSWER)} | {("blocks.0.mlp.hook_post", n) for n in range(11, NEURON)}
    masks, keep = masks_of(model, "mean", ALL_NODES - noisy)
    test = MaskedEvaluator(model, masks, pairs.test)
    change = (test.margins(keep) - test.margins(None)).abs()
    assert 0.01 < change.mean() < 0.1 * test.margins(None).abs().mean()


# ----------------------------------------------------------------------------------------- the pruner


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_the_pruner_keeps_the_known_circuit_and_no_decoy(model, pairs, ablation):
    circuit = run_pruner(model, pairs, ablation)
    assert node_set(circuit.masks) == KNOWN_NODES  # precision and recall 1 (greedy cleanup does the last part)
    assert circuit.task_loss <= circuit.target_loss
    assert circuit.n_edges == 6


def test_stages_2_to_5_from_a_saved_circuits_scores_give_the_same_circuit(model, pairs, tmp_path):
    circuit = run_pruner(model, pairs, "mean")
    loaded = Circuit.load(circuit.save(tmp_path / "known"), model)
    again = run_pruner(model, pairs, "mean", scores=loaded.scores)
    assert node_set(again.masks) == node_set(circuit.masks) == KNOWN_NODES
    assert again.removed_edges == circuit.removed_edges and again.task_loss == pytest.approx(circuit.task_loss)
    timings = ("seconds_masks", "seconds_search_and_cleanup")
    found, found_again = ({k: v for k, v in c.search.items() if k not in timings} for c in (circuit, again))
    assert again.history == [] and found_again == found  # no mask training, then the same search
    # Scores that rank the decoys first make the search keep more before cleanup: it ranks by the scores given.
    reversed_scores = {name: -score for name, score in loaded.scores.items()}
    assert run_pruner(model, pairs, "mean", scores=reversed_scores).search["units"] > circuit.search["units"]
    with pytest.raises(ValueError, match="saved scores lack 1 node locations"):
        run_pruner(model, pairs, "mean", scores=dict(list(loaded.scores.items())[1:]))


COLLAPSE = (
    "Pruner v2 defaults (lr 1e-2, init 0.1 ± 0.01): the confident model's task gradient (~e^-margin) is below "
    "the penalty's from the first step, AdamW moves every score down by ~lr a step, all cross zero together "
    "near step 10, and once the nodes downstream are ablated those upstream get no gradient: the masks end at "
    "chance (trained-mask test loss 0.693 in 8 of 8 runs, mean and zero ablation, 100 and 300 steps)"
)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="defaults", marks=pytest.mark.xfail(strict=True, reason=COLLAPSE)),
        pytest.param(PAPER_CENTRE, id="paper-centre"),  # holds at 100 steps; at 300 it collapses in 2 of 4 runs
        pytest.param(SPREAD_INIT, id="spread-init"),
    ],
)
@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_mask_training_keeps_the_circuit_it_is_rewarded_for(model, ablation, settings):
    """No collapse: the masks training ends with (τ > 0) hold the known circuit and reach the target on
    held-out pairs, and the search needs no more than a few extra nodes before cleanup."""
    pairs = known_circuit_pairs(steps=settings.get("steps", STEPS))
    circuit = run_pruner(model, pairs, ablation, **settings)
    evaluation = controls.evaluate_trained_masks(model, circuit, pairs)
    trained = {(name, i) for name, s in circuit.scores.items() for i in (s.flatten() > 0).nonzero().flatten().tolist()}
    assert evaluation.trained_calibrated_loss <= circuit.target_loss
    assert evaluation.final_training_loss <= circuit.target_loss
    assert trained >= KNOWN_NODES
    assert circuit.search["units"] <= 2 * len(KNOWN_NODES)


def ranking_at(model, pairs, ablation: str, score: float, tiebreak: bool) -> list[tuple[str, int]]:
    """The pruner's ranking of nodes when every score is `score` (a perfect tie), with or without its tiebreak."""
    masks, _ = masks_of(model, ablation, set())
    with torch.no_grad():
        for param in masks.scores:
            param.fill_(score)
    if tiebreak:
        masks.tiebreak = unit_attribution(model, masks, pairs.selection)
    nodes = [(name, i) for name in masks.names for i in range(masks.means[name].numel())]
    return [nodes[unit] for unit in masks.ranking().tolist()]  # untied q/k: one unit per node, in hook order


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_ties_among_kept_nodes_are_broken_by_attribution_not_hook_order(model, pairs, ablation):
    assert not set(ranking_at(model, pairs, ablation, 1.0, tiebreak=False)[:6]) & KNOWN_NODES  # hook order: decoys
    # with the tiebreak, the six known nodes whose first-order effect is not saturated come first (the q and k
    # path's is: their attention is already sharp, so attribution ranks them low, as it does in the baseline)
    assert set(ranking_at(model, pairs, ablation, 1.0, tiebreak=True)[:6]) < KNOWN_NODES


@pytest.mark.xfail(
    strict=True,
    reason="At a collapsed mask (every score below zero) the tiebreak is the attribution at that mask, where a "
    "node gets no gradient once the nodes downstream of it are ablated (13 of 128 units nonzero with mean "
    "ablation, all of them write nodes; 1 with zero ablation); the other ties fall back to hook order",
)
@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_ties_among_ablated_nodes_are_broken_by_attribution_not_hook_order(model, pairs, ablation):
    assert set(ranking_at(model, pairs, ablation, -1.0, tiebreak=True)[:6]) < KNOWN_NODES


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_a_path_the_circuit_leaves_outside_is_cut_so_that_ablating_the_circuit_costs_chance(pairs, ablation):
    """Stage 5 (necessity). The smallest sufficient circuit is one of the two paths (the main one with mean
    ablation, the shorter backup with zero ablation); ablating it leaves the other answering. The stage adds a
    single node of the other path, which cuts it, and the circuit still reaches the target."""
    model = backup_path_model()
    without = run_pruner(model, pairs, ablation, necessity=False)
    circuit = run_pruner(model, pairs, ablation)
    assert node_set(without.masks) in (KNOWN_NODES, BACKUP_NODES)
    assert without.necessity_loss < 0.2  # the control: without the stage the other path still answers
    assert circuit.necessity_loss >= tasks.CHANCE_LOSS - 1e-3
    added = node_set(circuit.masks) - node_set(without.masks)
    assert node_set(circuit.masks) > node_set(without.masks) and len(added) == 1
    assert added < (KNOWN_NODES | BACKUP_NODES)
    assert circuit.search["units_added_for_necessity"] == 1 and circuit.search["necessity_reached"]
    assert circuit.task_loss <= circuit.target_loss


# --------------------------------------------------------------------------------------- the controls


@pytest.mark.parametrize("control", ["nonsense labels", "random model"])
def test_controls_on_trained_masks_stay_at_chance(model, pairs, control):
    """With masks trained as on the real task (where they reach the target, see above), a task the model does
    not track and a model with no mechanism both stay at chance on held-out pairs."""
    subject = controls.random_model(model) if control == "random model" else model
    control_pairs = known_circuit_pairs(nonsense=True) if control == "nonsense labels" else pairs
    circuit = run_pruner(subject, control_pairs, "mean", skip_unsolved=False, **PAPER_CENTRE)
    evaluation = controls.evaluate_trained_masks(subject, circuit, control_pairs)
    tolerance = 0.02
    assert evaluation.trained_calibrated_loss >= tasks.CHANCE_LOSS - tolerance
    assert circuit.task_loss >= tasks.CHANCE_LOSS - tolerance  # the search found no circuit either
    assert evaluation.full_model_calibrated_loss >= tasks.CHANCE_LOSS - tolerance


def test_nonsense_task_swaps_a_pairs_answers_exactly_when_the_rule_says():
    task = tasks.get("single_double_quote")
    nonsense = controls.nonsense_task(task)
    assert nonsense.name == "single_double_quote__nonsense" and nonsense.candidates == task.candidates
    swaps = []
    for seed in range(40):
        original, relabelled = task.sampler(random.Random(seed)), nonsense.sampler(random.Random(seed))
        swapped = controls.odd_length(original[0].prompt)
        assert relabelled == (original[::-1] if swapped else original)
        swaps.append(swapped)
    assert 0 < sum(swaps) < len(swaps)
    assert nonsense.pairs("test", 5) == controls.nonsense_task(task).pairs("test", 5)  # deterministic


def test_run_controls_trains_masks_for_every_control_and_tabulates_them(tiny_model):
    small = dict(steps=2, pairs_per_step=2, selection_pairs=4, test_pairs=4, cleanup=False, edge_cleanup=False)
    text = torch.randint(0, tiny_model.cfg.d_vocab, (4, tiny_model.cfg.n_ctx))
    runs = controls.run_controls(tiny_model, tasks.get("single_double_quote"), pretraining_tokens=text, **small)
    assert list(runs) == ["mean ablation (the method)", "zero ablation", "random model", "nonsense task"]
    assert all(len(run.circuit.history) == 2 for run in runs.values())  # trained although the model is unsolved
    assert runs["nonsense task"].circuit.task_name == "single_double_quote__nonsense"
    table = controls.control_table(runs)
    assert table.shape[0] == 4 and {"trained_calibrated_loss", "final_training_loss"} <= set(table.columns)


# ------------------------------------------------------------------------------ the attribution baseline


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_learned_pruning_beats_the_attribution_baseline(model, pairs, ablation):
    learned = run_pruner(model, pairs, ablation, **PAPER_CENTRE)
    table = controls.edges_vs_loss(model, learned, pairs, target_losses=(0.15,))
    by_method = table.set_index("method")
    assert (by_method.test_loss <= 0.15).all()
    assert by_method.nodes["attribution"] >= 2 * by_method.nodes["learned"]
    assert by_method.edges["attribution"] > by_method.edges["learned"]
    baseline = controls.attribution_circuit(model, learned, pairs)
    assert node_set(baseline.masks) >= KNOWN_NODES  # it has the circuit, among decoys
    assert baseline.n_nodes == by_method.nodes["attribution"] and baseline.task_loss <= 0.15
    assert len(plot_edges_vs_loss(table).lines) == 2 + 1  # two methods, one target line
