"""Find a task's circuit: learn a keep/ablate mask over nodes, then find the fewest nodes that suffice.

The paper's method (its Appendix A.5) in stages 1-3, and what its authors did by hand, or not at all, in 4-5:

1. **Masks.** Each node (one channel at one of the eight node locations of one layer) gets a score τ. The
   forward pass keeps a node when τ > 0 and otherwise replaces its activation by a constant (its mean over
   pretraining text, by default); the backward pass pretends the step was a sigmoid. The loss is the task loss
   plus a penalty per kept node. AdamW with gradient clipping, the learning rate decayed linearly to zero,
   scores clamped to [-1, 1], and every step sees contrast pairs it has not seen before.
2. **Search.** Nodes are ranked by τ (ties broken by their gradient attribution) and we look for the
   smallest k whose top-k nodes reach the target loss (`discretize.smallest_sufficient`).
3. **Calibration.** A logit scale and shift fitted with 16 LBFGS steps, part of the circuit from then on
   (discretised circuits are badly calibrated).
4. **Cleanup.** Each remaining node (then each edge) is dropped if the circuit still reaches the target without
   it. A few hundred such choices on one pair set would fit that set's noise, so a removal is kept only when
   the circuit reaches the target on the *check* pairs too; if even the search's k misses there, the next units
   of the ranking are added first, until it holds. Last, the nodes left *silent* go without a trial: those of a
   sub-layer whose every write channel is ablated, which then writes a constant whatever they do.
5. **Necessity** (after the node cleanup, before the edges'). While ablating the circuit still leaves the loss
   under chance (a backup path outside it carries the answer), the unit outside it whose ablation costs most is
   added (`complete_necessity`).

Four disjoint sets of pairs keep the numbers honest: mask training sees *train* pairs, stages 2-5 choose on
*selection* pairs, and what they keep must also hold on *check* pairs; every loss a circuit reports is measured
on *test* pairs that chose nothing. The model's weights stay frozen and AbsTopK still applies; masks act at the
node hook points.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitlab import settings, tasks
from circuitlab.circuit import Circuit, Edge, Node, circuit_edges, edges_ablated, last_position_logits, silent_nodes
from circuitlab.corpus import TokenSampler, load_token_streams
from circuitlab.discretize import greedy_cleanup, smallest_sufficient
from circuitlab.masks import (
    ABLATIONS,
    PROBE_SHARES,
    MaskedEvaluator,
    NodeMasks,
    ablation_values,
    check_token_range,
)
from circuitlab.model import SparseTransformer
from circuitlab.tasks import CHANCE_LOSS, Task, TaskBatch, length_buckets, pair_rows, select_rows, task_loss

PRETRAINING_ROWS = 64  # rows of [n_ctx] validation text that "mean" ablation averages over
ABLATION_TEXT_SEED = 0  # one sample of that text per model, whatever the pruning seed
NECESSITY_CANDIDATES = 8  # units stage 5 tries per step, best attribution first, for one that keeps sufficiency
EARLIER_PROBE_SHARES = (0.0625, 0.125, 0.25)  # early rejection's probes before the fourth (of half the pairs)


@dataclass
class PruneConfig:
    """Pruning hyper-parameters. Defaults: the paper's search centre (its Table 2) where our scale allows,
    with a penalty that ramps up so the task gradient can rank nodes before the penalty wins."""

    target_loss: float = 0.15  # per-prompt binary cross-entropy the circuit must reach on held-out pairs
    ablation: str = "mean"  # "mean" over the model's pretraining text sample, "zero", or "task_mean" over task prompts
    steps: int = 300
    pairs_per_step: int = 16  # contrast pairs per batch (two prompts each), fresh at every step
    selection_pairs: int = 400  # pairs that choose k, fit the calibration and decide the cleanup
    test_pairs: int = 400  # pairs that only report: every loss a circuit states is measured on them
    check_pairs: int = 400  # pairs that confirm the cleanup's removals (0: no check); drawn after the others
    lr: float = 1e-2
    weight_decay: float = 1e-3
    beta2: float = 0.95
    grad_clip: float = 1.0
    penalty: float = 3e-3  # added loss per kept node (the paper's k_coef)
    penalty_warmup_frac: float = 0.25  # the penalty ramps from 0 to `penalty` over this fraction of the steps
    heaviside_temp: float = 1.0  # temperature of the sigmoid whose derivative stands in for the step's
    init_mean: float = 0.1
    init_std: float = 0.01
    tie_qk: bool = False  # one score for q and k channel (h, e) of a layer: they are kept or pruned together
    selection_margin: float = 0.15  # stages 2-4 aim at target * (1 - margin), so circuits hold on fresh pairs
    # Growth of the search's geometric scan over k. Loss against k is bumpy: at 2.0 bracket counting's scan
    # stepped over a dip at k = 140-340 to a bisection near 300 (or, from masks trained on another CPU, 750).
    scan_ratio: float = 1.25
    cleanup: bool = True  # greedy removal of the nodes the search kept but the circuit can do without
    necessity: bool = True  # stage 5: add units until ablating the circuit costs what chance does
    edge_cleanup: bool = True  # then the same for single weights (edges) between kept nodes
    cleanup_trials: int = 200  # most loss evaluations each cleanup may spend (dense circuits have thousands)
    # > 0: when the search for k keeps more units than this, stop there (no stages 3-5): `circuitlab.search`
    # drops a trial this way once it cannot beat the best circuit so far
    give_up_units: int = 0
    probe_shares: tuple[float, ...] = PROBE_SHARES  # early rejection's probes (`MaskedEvaluator`)
    seed: int = 0
    skip_unsolved: bool = True  # when the full model misses the target, keep every node without training masks

    def __post_init__(self) -> None:
        settings.coerce_fields(self)
        count, fraction = settings.at_least(1), settings.between(0, 1)
        settings.check(
            self,
            {
                "ablation": settings.one_of(ABLATIONS),
                **dict.fromkeys(("steps", "pairs_per_step", "selection_pairs", "test_pairs"), count),
                **dict.fromkeys(("target_loss", "lr", "grad_clip", "heaviside_temp"), settings.above(0)),
                **dict.fromkeys(("weight_decay", "penalty", "init_std", "check_pairs"), settings.at_least(0)),
                **dict.fromkeys(("beta2", "penalty_warmup_frac"), fraction),
                "selection_margin": settings.between(0, 1),
                "scan_ratio": settings.above(1),
                **dict.fromkeys(("cleanup_trials", "give_up_units"), settings.at_least(0)),
                "probe_shares": (increasing_shares, "increasing shares of the pairs, each strictly between 0 and 1"),
            },
        )

    @classmethod
    def of_circuit(cls, circuit: Circuit) -> PruneConfig:
        """The config of the pruning run that found `circuit` (checked like any other settings). Circuits saved
        before check pairs existed were not checked: their config reads as `check_pairs=0`; those saved before
        stage 5 existed read as `necessity=False`, and those saved before the fourth probe as three probes."""
        earlier = {"check_pairs": 0, "necessity": False, "probe_shares": EARLIER_PROBE_SHARES}
        config = {**earlier, **circuit.config}
        return settings.build(cls, config, source=f"the {circuit.task_name} circuit's config")

    @property
    def search_target(self) -> float:
        return self.target_loss * (1 - self.selection_margin)

    def evaluator(self, model: SparseTransformer, masks: NodeMasks, batch: TaskBatch) -> MaskedEvaluator:
        """A `MaskedEvaluator` of `batch` that rejects early with this config's probes."""
        return MaskedEvaluator(model, masks, batch, self.probe_shares)

    def new_masks(self, model: SparseTransformer, means: dict[str, Tensor]) -> NodeMasks:
        """Untrained masks over `model`'s nodes, initialised as this config says."""
        fields = ("init_mean", "init_std", "heaviside_temp", "tie_qk", "seed")
        return NodeMasks(model, means, **{field: getattr(self, field) for field in fields})


def increasing_shares(shares: tuple[float, ...]) -> bool:
    return all(0 < share < 1 for share in shares) and list(shares) == sorted(set(shares))


@dataclass
class PrunePairs:
    """The disjoint pair sets of one pruning run (each a `TaskBatch`, a pair's two prompts adjacent)."""

    train: TaskBatch  # mask training: `pairs_per_step` fresh pairs a step, cycled only when exhausted
    selection: TaskBatch  # choose k, calibrate, clean up
    test: TaskBatch  # report
    check: TaskBatch | None = None  # confirm the cleanup's removals (None: they are not checked)

    @classmethod
    def from_task(cls, task: Task, tokenizer, cfg: PruneConfig, n_ctx: int | None = None) -> PrunePairs:
        """All four from one draw of the task's *test* split (prompts the training corpus never holds, so the
        model has not memorised them), so no pair is in two sets. The check pairs come last, so a run with
        more or fewer of them trains, chooses and reports on the same pairs."""
        sizes = [cfg.steps * cfg.pairs_per_step, cfg.selection_pairs, cfg.test_pairs, cfg.check_pairs]
        drawn = task.batch(tokenizer, "test", sum(sizes), seed=cfg.seed, n_ctx=n_ctx)
        bounds = [2 * sum(sizes[:i]) for i in range(len(sizes) + 1)]
        train, selection, test, check = (
            select_rows(drawn, torch.arange(a, b)) if b > a else None
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        )
        assert train is not None and selection is not None and test is not None  # PruneConfig: each at least 1
        return cls(train, selection, test, check)

    @classmethod
    def of_circuit(cls, circuit: Circuit, model: SparseTransformer) -> PrunePairs:
        """The pairs `circuit` was pruned with on `model`, drawn again from its task and config."""
        task, cfg = tasks.get(circuit.task_name), PruneConfig.of_circuit(circuit)
        return cls.from_task(task, model.tokenizer, cfg, model.cfg.n_ctx)


def report_pairs(circuit: Circuit, task: Task, tokenizer, n_ctx: int | None = None) -> TaskBatch:
    """The held-out test pairs `circuit`'s losses were reported on: pairs that chose nothing in its pruning."""
    return PrunePairs.from_task(task, tokenizer, PruneConfig.of_circuit(circuit), n_ctx).test


@contextlib.contextmanager
def frozen(model: SparseTransformer) -> Iterator[SparseTransformer]:
    """The model in eval mode with gradients off, restored to the caller's settings afterwards."""
    training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        model.train(training)
        for name, param in model.named_parameters():
            param.requires_grad_(requires_grad[name])


def prune(
    model: SparseTransformer,
    task: Task | None = None,
    cfg: PruneConfig | None = None,
    *,
    pairs: PrunePairs | None = None,
    pretraining_tokens: Tensor | None = None,
    scores: dict[str, Tensor] | None = None,
    progress: bool = True,
    **overrides,
) -> Circuit:
    """Find the smallest set of nodes whose held-out task loss is at most `cfg.target_loss`.

    Pass a registered `task`, or ready `pairs` (`PrunePairs` of `TaskBatch`es, for tasks and models of your
    own). `pretraining_tokens` ([batch, pos]) are the text "mean" ablation averages over; by default the
    model's one sample of validation text (`mean_ablation_tokens`), whatever `cfg.seed`. `scores` (hook
    name -> trained scores, e.g. a saved circuit's) skip the mask training: stages 2-5 run from them, to
    re-derive a circuit on another CPU or with other search settings. Keyword overrides change single
    `PruneConfig` fields. The model is left as it was found (mode and gradient flags).
    """
    cfg = PruneConfig(**{**asdict(cfg or PruneConfig()), **overrides})
    circuits = prune_targets(
        model,
        task,
        [cfg.target_loss],
        cfg,
        pairs=pairs,
        pretraining_tokens=pretraining_tokens,
        scores=scores,
        progress=progress,
    )
    return circuits[cfg.target_loss]


def prune_targets(
    model: SparseTransformer,
    task: Task | None,
    targets: list[float],
    cfg: PruneConfig | None = None,
    *,
    pairs: PrunePairs | None = None,
    pretraining_tokens: Tensor | None = None,
    scores: dict[str, Tensor] | None = None,
    progress: bool = True,
) -> dict[float, Circuit]:
    """`prune` at several target losses from one mask training (stages 2-5 run once per target): the
    circuit-size-versus-loss curves of the paper's Figure 2. Target -> circuit."""
    cfg = cfg or PruneConfig()
    if pairs is None:
        if task is None:
            raise ValueError("prune needs a task or ready pairs= (a PrunePairs of train, selection and test batches)")
        pairs = PrunePairs.from_task(task, model.tokenizer, cfg, n_ctx=model.cfg.n_ctx)
    for split in ("train", "selection", "test", "check"):
        if (batch := getattr(pairs, split)) is not None:
            check_token_range(batch.tokens, model.cfg.d_vocab, f"{split} pairs")
    task_name = task.name if task is not None else "custom"
    with frozen(model):
        if cfg.ablation == "mean" and pretraining_tokens is None:
            pretraining_tokens = mean_ablation_tokens(model)
        means = ablation_values(model, cfg.ablation, pretraining_tokens, pairs.train)
        masks = cfg.new_masks(model, means)
        selection, test = cfg.evaluator(model, masks, pairs.selection), cfg.evaluator(model, masks, pairs.test)
        check = cfg.evaluator(model, masks, pairs.check) if pairs.check is not None else None
        full_model_loss = test.loss(None)
        ablated_model_loss = test.loss(masks.node_masks([]))
        history: list[dict] = []
        start = time.perf_counter()
        if full_model_loss <= max(targets) or not cfg.skip_unsolved:
            if scores is None:
                history = train_masks(model, masks, pairs.train, cfg, progress, desc=f"prune {task_name}")
            else:
                masks.load_scores(scores)
            masks.tiebreak = unit_attribution(model, masks, pairs.selection)
        mask_seconds = time.perf_counter() - start
        circuits = {}
        for target in targets:
            target_cfg = replace(cfg, target_loss=target)
            units, found, removed_edges = list(range(masks.n_units)), dict[str, float](), list[tuple[Node, Node]]()
            if full_model_loss <= target or not cfg.skip_unsolved:
                evaluators = [selection] if check is None else [selection, check]
                passes_before, start = sum(e.passes for e in evaluators), time.perf_counter()
                stopped_before = sum(e.rejected for e in evaluators)
                units, found = search_units(masks, selection, target_cfg, check)
                go_on = len(units) < masks.n_units and not found.get("given_up")
                if cfg.necessity and go_on:
                    units, necessity_found = complete_necessity(model, masks, units, selection, target_cfg, check)
                    found |= necessity_found
                if cfg.edge_cleanup and go_on:
                    kept = masks.node_masks(units)
                    removed_edges, edges_found = cleanup_edges(model, kept, means, selection, target_cfg, check)
                    found |= edges_found
                found["seconds_masks"] = round(mask_seconds, 1)
                found["seconds_search_and_cleanup"] = round(time.perf_counter() - start, 1)
                found["passes"] = round(sum(e.passes for e in evaluators) - passes_before, 2)
                found["trials_stopped_early"] = sum(e.rejected for e in evaluators) - stopped_before
            node_masks = masks.node_masks(units)
            bool_masks = {name: mask.bool() for name, mask in node_masks.items()}
            with edges_ablated(model, removed_edges, means):
                selection_loss, calibration = selection.fit(node_masks)
                task_loss_value, uncalibrated_loss = test.loss(node_masks, calibration), test.loss(node_masks)
            circuits[target] = Circuit(
                task_name=task_name,
                masks=bool_masks,
                ablation_values=means,
                ablation=cfg.ablation,
                target_loss=target,
                task_loss=task_loss_value,
                full_model_loss=full_model_loss,
                ablated_model_loss=ablated_model_loss,
                necessity_loss=test.loss(node_masks, invert=True),
                edges=circuit_edges(model, bool_masks, removed_edges),
                scores={name: masks.scores[masks.param_of[name]].detach().clone() for name in masks.names},
                history=history,
                config=asdict(target_cfg),
                calibration=calibration,
                selection_loss=selection_loss,
                uncalibrated_loss=uncalibrated_loss,
                search=found,
                removed_edges=removed_edges,
            )
    return circuits


def search_units(
    masks: NodeMasks, selection: MaskedEvaluator, cfg: PruneConfig, check: MaskedEvaluator | None = None
) -> tuple[list[int], dict]:
    """Stages 2 and 4 for nodes: the smallest top-k of the ranking that reaches the search target on the
    selection pairs (calibrated); if it misses on the `check` pairs, the next units of the ranking, as few as
    reach it there; then greedy removal of the units the circuit can do without on both pair sets. Returns the
    units kept (most needed first) and what each stage found; a k above `cfg.give_up_units` (> 0) ends it there
    (`given_up`)."""

    def loss_of(kept: list[int], on: MaskedEvaluator | None = None) -> float:
        return calibrated_loss(selection, masks.node_masks(kept), cfg, on)

    ranking = masks.ranking().tolist()
    k = smallest_sufficient(lambda k: loss_of(ranking[:k]), cfg.search_target, masks.n_units, cfg.scan_ratio)
    units = ranking[:k]
    found = {
        "units": k,
        "nodes": int(sum(m.sum() for m in masks.node_masks(units).values())),
    }
    if 0 < cfg.give_up_units < k:
        return units, found | {"given_up": True}
    if check is not None and k < masks.n_units:
        rest = ranking[k:]
        added = smallest_sufficient(
            lambda n: loss_of(units + rest[:n], check), cfg.search_target, len(rest), cfg.scan_ratio
        )
        found["units_added_by_check"] = added
        units += rest[:added]
    if cfg.cleanup and len(units) < masks.n_units:

        def loss_without(gone: frozenset[int]) -> float:
            return loss_of([u for u in units if u not in gone], check)

        cleaned = greedy_cleanup(units[::-1], loss_without, cfg.search_target, cfg.cleanup_trials)
        found["nodes_unsettled_by_cleanup"] = cleaned.unsettled  # > 0: the trial budget ran out first
        found["removed_by_cleanup"] = len(cleaned.removed)
        units = [u for u in units if u not in set(cleaned.removed)]
        audible = without_silent(masks, units)
        found["silent_removed"] = len(units) - len(audible)
        units = audible
    return units, found


def without_silent(masks: NodeMasks, units: list[int]) -> list[int]:
    """`units` less those whose nodes sit in a sub-layer the others ablate whole (`circuit.silent_nodes`):
    removing them leaves every output exactly as it was, so it takes no trial."""
    silent = silent_nodes(masks.node_masks(units))
    gone = set(masks.unit_of[torch.cat([silent[name].flatten() for name in masks.names])].tolist())
    return [u for u in units if u not in gone]


def complete_necessity(
    model: SparseTransformer,
    masks: NodeMasks,
    units: list[int],
    selection: MaskedEvaluator,
    cfg: PruneConfig,
    check: MaskedEvaluator | None = None,
) -> tuple[list[int], dict]:
    """Stage 5: a circuit necessary as well as sufficient. The smallest sufficient circuit can leave a backup
    path outside it (a second head that carries the same fact), and then ablating the circuit costs less than
    chance. While it does, on the selection or the check pairs, add the unit outside the circuit whose ablation
    raises that loss most to first order (`unit_attribution` at the inverted masks), the first of the
    `NECESSITY_CANDIDATES` best that keeps the circuit sufficient on both; at most `cfg.cleanup_trials` units.
    Where ablating every node costs less than chance (the embedding alone solves the task), that is the goal.
    Returns the units kept (the added ones last) and what the stage found."""
    evaluators = [selection] if check is None else [selection, check]
    nothing = masks.node_masks([])
    goals = [min(CHANCE_LOSS, evaluator.loss(nothing)) for evaluator in evaluators]

    def necessary(kept: list[int]) -> bool:
        node_masks = masks.node_masks(kept)
        return all(e.loss(node_masks, invert=True) >= goal for e, goal in zip(evaluators, goals, strict=True))

    def sufficient(kept: list[int]) -> bool:
        node_masks = masks.node_masks(kept)
        return calibrated_loss(selection, node_masks, cfg, check) <= cfg.search_target

    added: list[int] = []
    reached = necessary(units)
    while not reached and len(added) < cfg.cleanup_trials:
        kept = units + added
        inverted = {name: 1 - mask for name, mask in masks.node_masks(kept).items()}
        gain = unit_attribution(model, masks, selection.batch, inverted)
        gain[kept] = -torch.inf
        best_outside = gain.argsort(descending=True)[: min(NECESSITY_CANDIDATES, masks.n_units - len(kept))]
        pick = next((unit for unit in best_outside.tolist() if sufficient(kept + [unit])), None)
        if pick is None:
            break
        added.append(pick)
        reached = necessary(units + added)
    return units + added, {"units_added_for_necessity": len(added), "necessity_reached": reached}


def cleanup_edges(
    model: SparseTransformer,
    node_masks: dict[str, Tensor],
    means: dict[str, Tensor],
    selection: MaskedEvaluator,
    cfg: PruneConfig,
    check: MaskedEvaluator | None = None,
    order: list[Edge] | None = None,
) -> tuple[list[tuple[Node, Node]], dict]:
    """Edge-level pruning inside the circuit, the method the paper names but did not build: ablate single
    weights between kept nodes (smallest magnitude first, or as in `order`, the circuit's edges in the order to
    try them) while the circuit still reaches the search target on the selection and the `check` pairs. Returns
    the removed edges as (source, target) nodes, and what the cleanup found."""
    if order is None:
        edges = circuit_edges(model, {name: mask.bool() for name, mask in node_masks.items()})
        order = sorted(edges, key=lambda edge: abs(edge.weight))
    links = [(edge.source, edge.target) for edge in order]

    def loss_without(gone: frozenset[int]) -> float:
        with edges_ablated(model, [links[i] for i in sorted(gone)], means):
            return calibrated_loss(selection, node_masks, cfg, check)

    cleaned = greedy_cleanup(list(range(len(links))), loss_without, cfg.search_target, cfg.cleanup_trials)
    found = {"edges_unsettled_by_cleanup": cleaned.unsettled, "removed_edges": len(cleaned.removed)}
    return [links[i] for i in cleaned.removed], found


def calibrated_loss(
    selection: MaskedEvaluator, node_masks: dict[str, Tensor], cfg: PruneConfig, check: MaskedEvaluator | None = None
) -> float:
    """The loss of `node_masks` as stages 2-5 judge it: calibrated on the selection pairs and measured there; when
    it holds there and `check` pairs are given, the larger of that and the loss on the check pairs under the same
    calibration. A trial whose probe is clearly above the search target is rejected without its whole pass
    (`MaskedEvaluator`)."""
    loss, calibration = selection.fit(node_masks, reject_above=cfg.search_target)
    if check is None or loss > cfg.search_target:
        return loss
    return max(loss, check.loss(node_masks, calibration, reject_above=cfg.search_target))


def learning_rate(step: int, cfg: PruneConfig) -> float:
    """The paper's schedule: linear decay from `lr` to zero, no warm-up."""
    return cfg.lr * (1 - step / cfg.steps)


def penalty_weight(step: int, cfg: PruneConfig) -> float:
    """The per-node penalty at `step`: a linear ramp from zero, so the task loss ranks nodes first."""
    ramp = max(1.0, cfg.penalty_warmup_frac * cfg.steps)
    return cfg.penalty * min(1.0, (step + 1) / ramp)


def train_masks(
    model: SparseTransformer, masks: NodeMasks, train: TaskBatch, cfg: PruneConfig, progress: bool, desc: str
) -> list[dict]:
    """Optimise the node scores: task loss on fresh training pairs plus the (ramped) penalty per kept node."""
    optimizer = torch.optim.AdamW(masks.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay)
    n_pairs = len(train) // 2
    history = []
    for step in tqdm(range(cfg.steps), desc=desc, disable=not progress):
        first = (step * cfg.pairs_per_step) % n_pairs
        pairs = (torch.arange(cfg.pairs_per_step) + first) % n_pairs
        batch = select_rows(train, pair_rows(pairs))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        with model.hooks(fwd_hooks=masks.hooks()):
            loss = task_loss(*last_position_logits(model, batch))
        kept = masks.n_kept()
        (loss + penalty_weight(step, cfg) * kept).backward()
        torch.nn.utils.clip_grad_norm_(masks.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for score in masks.scores:
                score.clamp_(-1, 1)
        history.append({"step": step, "task_loss": round(loss.item(), 5), "n_kept": int(kept.item())})
    return history


def unit_attribution(
    model: SparseTransformer, masks: NodeMasks, batch: TaskBatch, node_masks: dict[str, Tensor] | None = None
) -> Tensor:
    """How much each unit's node(s) lower the task loss, to first order, under `node_masks` (default: the
    trained discrete masks): minus the gradient of the loss with respect to the 0/1 mask value (attribution
    patching on the mask)."""
    if node_masks is None:
        node_masks = masks.node_masks((masks.unit_scores() > 0).nonzero().flatten())
    fixed = {name: mask.clone().requires_grad_() for name, mask in node_masks.items()}
    masks.fixed = fixed
    try:
        with torch.enable_grad(), model.hooks(fwd_hooks=masks.hooks()):
            for bucket in length_buckets(batch, max(1, len(batch) // 64)):  # a small bucket's graph at a time
                task_loss(*last_position_logits(model, bucket), reduction="sum").backward()
    finally:
        masks.fixed = None
    grads = [torch.zeros(m.numel()) if m.grad is None else m.grad.flatten() for m in fixed.values()]
    per_node = -torch.cat(grads) / len(batch)
    return torch.zeros(masks.n_units).index_add_(0, masks.unit_of, per_node)


def trained_masks(model: SparseTransformer, circuit: Circuit) -> NodeMasks:
    """The masks of the pruning run that found `circuit`: its config, ablation constants and trained scores."""
    masks = PruneConfig.of_circuit(circuit).new_masks(model, circuit.ablation_values)
    masks.load_scores(circuit.scores)
    return masks


def sample_pretraining_tokens(model: SparseTransformer, n_rows: int, seed: int) -> Tensor:
    """Rows of real validation text the size of the model's context."""
    sampler = TokenSampler(load_token_streams(), "val", model.cfg.n_ctx, synthetic_fraction=0.0, seed=seed)
    return sampler.batch(0, n_rows)


def mean_ablation_tokens(model: SparseTransformer) -> Tensor:
    """The text "mean" ablation averages over: one sample per model, the same for every pruning seed and
    command, so a model's circuits share their ablation constants and differ only by what their seed drew."""
    return sample_pretraining_tokens(model, PRETRAINING_ROWS, ABLATION_TEXT_SEED)


@torch.no_grad()
def loss_vs_nodes(model: SparseTransformer, circuit: Circuit, batch: TaskBatch, ks: list[int]) -> list[float]:
    """Uncalibrated task loss when keeping the `k` highest-scoring nodes of `circuit`'s pruning run, for each k."""
    masks = trained_masks(model, circuit)
    evaluator = MaskedEvaluator(model, masks, batch)
    return [evaluator.loss(masks.highest(k)) for k in ks]
