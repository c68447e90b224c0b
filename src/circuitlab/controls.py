"""Controls that can fail, and the baseline learned pruning is measured against (the paper's Figure 31).

A pruner picks nodes to lower a loss, so it can find a low-loss set of nodes where there is no mechanism at
all. The controls run it where there is none, a randomly initialised model (`random_model`) and a task whose
answers follow a rule no model tracks (`nonsense_task`), with the masks trained as usual, and judge what the
pruner produced on held-out pairs (`evaluate_trained_masks`): the masks it trained (the nodes with τ > 0) and
the circuit it chose. There both must stay at chance, ln 2 ≈ 0.693 nats per prompt; on the real task they must
not, which is what makes them controls that could fail.

The baseline ranks nodes by gradient attribution with every node kept, then runs the same search for the
smallest sufficient top-k and the same calibration as learned pruning, on the same pairs and ablation
constants (`attribution_circuit`, `edges_vs_loss`): `prune.search_units` over either ranking.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from circuitlab.circuit import Circuit, circuit_edges
from circuitlab.masks import MaskedEvaluator, NodeMasks
from circuitlab.model import SparseTransformer
from circuitlab.prune import (
    PruneConfig,
    PrunePairs,
    frozen,
    mean_ablation_tokens,
    prune,
    search_units,
    trained_masks,
    unit_attribution,
)
from circuitlab.sparsity import project_topk_
from circuitlab.tasks import Task, relabelled, select_rows

# ------------------------------------------------------------------------------------------ the controls


def odd_length(prompt: str) -> bool:
    """Whether the prompt has an odd number of characters: a fact about a prompt no task asks about."""
    return len(prompt) % 2 == 1


def nonsense_task(task: Task, swap: Callable[[str], bool] = odd_length) -> Task:
    """`task`'s prompts answered by a deterministic rule the model does not track: a pair's two answers are
    swapped when `swap(first prompt)` holds (by default, when that prompt has an odd number of characters).
    Unlike coin-flip labels the rule is a function of the prompt, so a pruner that found a "circuit" for it
    would fail the control rather than be unable to by construction."""
    rule = getattr(swap, "__name__", "a rule")
    return relabelled(task, swap, f"{task.name}__nonsense", f"{task.description} (answers swapped by {rule})")


def random_model(model: SparseTransformer, seed: int | None = None) -> SparseTransformer:
    """An untrained model of the same architecture and weight sparsity: fresh initialisation (seed
    `model.cfg.seed + 1` unless given), each matrix then cut to the trained model's fraction of weights."""
    cfg = dataclasses.replace(model.cfg, seed=model.cfg.seed + 1 if seed is None else seed)
    untrained = SparseTransformer(cfg, tokenizer=model.tokenizer)
    project_topk_(untrained.weight_matrices(), cfg.weight_l0, cfg.embed_l0, cfg.min_weights_per_unit)
    return untrained


@dataclass(frozen=True)
class MaskEvaluation:
    """Held-out losses (test pairs; calibrations fitted on selection pairs) of what a pruning run trained."""

    trained_nodes: int  # nodes whose trained score is > 0: the mask the training ended with
    trained_loss: float  # those nodes alone
    trained_calibrated_loss: float
    full_model_calibrated_loss: float  # every node kept: the best any circuit could be expected to do
    final_training_loss: float  # the mean batch loss of the last tenth of training (training pairs)


def evaluate_trained_masks(model: SparseTransformer, circuit: Circuit, pairs: PrunePairs) -> MaskEvaluation:
    """Judge the masks a pruning run trained (τ > 0), not only the circuit its search chose, on the run's held-out
    pairs. Prune with `skip_unsolved=False` so masks are trained even where the full model misses the target."""
    masks = trained_masks(model, circuit)
    trained = masks.node_masks((masks.unit_scores() > 0).nonzero().flatten())
    tail = [step["task_loss"] for step in circuit.history[-max(1, len(circuit.history) // 10) :]]
    with frozen(model):
        selection = MaskedEvaluator(model, masks, pairs.selection)
        test = MaskedEvaluator(model, masks, pairs.test)
        everything = masks.node_masks(torch.arange(masks.n_units))
        calibration, full_calibration = selection.fit(trained)[1], selection.fit(everything)[1]
        return MaskEvaluation(
            trained_nodes=int(sum(mask.sum() for mask in trained.values())),
            trained_loss=test.loss(trained),
            trained_calibrated_loss=test.loss(trained, calibration),
            full_model_calibrated_loss=test.loss(everything, full_calibration),
            final_training_loss=sum(tail) / len(tail) if tail else float("nan"),
        )


@dataclass
class ControlRun:
    """One pruning run of a control: the circuit it chose, the pairs it used and how its trained masks did."""

    circuit: Circuit
    pairs: PrunePairs
    evaluation: MaskEvaluation


def run_controls(
    model: SparseTransformer,
    task: Task,
    cfg: PruneConfig | None = None,
    *,
    pretraining_tokens: Tensor | None = None,
    method: Circuit | None = None,
    progress: bool = False,
    **overrides,
) -> dict[str, ControlRun]:
    """Prune `task` four ways, masks trained every time: the method as configured, zero ablation, a random
    model (`random_model`) and the nonsense task (`nonsense_task`). The last two should stay at chance.
    `method`: a circuit already pruned on `model` and `task` (e.g. a shipped one), which then stands for the
    method's run and sets `cfg` (its pairs are rebuilt from its config, not pruned again)."""
    if method is not None:
        if method.task_name != task.name or cfg is not None or overrides:
            raise ValueError(
                f"method: a circuit of {method.task_name!r} for the task {task.name!r}, with no cfg or overrides "
                "(its own config is the method's); pass either a circuit of this task or a config"
            )
        cfg = PruneConfig.of_circuit(method)
    cfg = PruneConfig(**{**dataclasses.asdict(cfg or PruneConfig()), **overrides, "skip_unsolved": False})
    if pretraining_tokens is None:
        pretraining_tokens = mean_ablation_tokens(model)
    variants = {
        f"{cfg.ablation} ablation (the method)": (model, task, cfg),
        "zero ablation": (model, task, dataclasses.replace(cfg, ablation="zero")),
        "random model": (random_model(model), task, cfg),
        "nonsense task": (model, nonsense_task(task), cfg),
    }
    run = functools.partial(prune, pretraining_tokens=pretraining_tokens, progress=progress)
    runs = {}
    for label, (subject, subject_task, subject_cfg) in variants.items():
        pairs = PrunePairs.from_task(subject_task, model.tokenizer, subject_cfg, n_ctx=model.cfg.n_ctx)
        if method is not None and (subject, subject_task, subject_cfg) == (model, task, cfg):
            circuit = method  # the method's own run, pruned before
        else:
            circuit = run(subject, subject_task, subject_cfg, pairs=pairs)
        runs[label] = ControlRun(circuit, pairs, evaluate_trained_masks(subject, circuit, pairs))
    return runs


def control_table(runs: dict[str, ControlRun]) -> pd.DataFrame:
    """One row per control: the chosen circuit's size and held-out loss, then its trained masks' (see
    `MaskEvaluation`). `task_loss` is calibrated, as every circuit's loss; compare both with `tasks.CHANCE_LOSS`."""
    rows = {}
    for label, run in runs.items():
        summary = run.circuit.summary()
        rows[label] = {
            **{key: summary[key] for key in ("nodes", "edges", "task_loss", "uncalibrated_loss", "full_model_loss")},
            **dataclasses.asdict(run.evaluation),
        }
    return pd.DataFrame(rows).T


# ------------------------------------------------------------------------------- the attribution baseline


def learned_masks(model: SparseTransformer, circuit: Circuit, pairs: PrunePairs) -> NodeMasks:
    """The masks of the pruning run that found `circuit`, ranked as its search ranked them: by trained score,
    ties broken by the attribution at the trained mask on the selection pairs."""
    masks = trained_masks(model, circuit)
    with frozen(model):
        masks.tiebreak = unit_attribution(model, masks, pairs.selection)
    return masks


def attribution_masks(model: SparseTransformer, circuit: Circuit, pairs: PrunePairs) -> NodeMasks:
    """The baseline's masks: every score equal, so the ranking is the tiebreak, |attribution| with every node
    kept: per unit, (activation − ablation value) · ∂loss/∂activation summed over positions and averaged over
    prompts (`unit_attribution` with every mask at 1). Measured, like the masks are learned, on training pairs
    (as many as the selection set holds), with `circuit`'s ablation constants."""
    masks = trained_masks(model, circuit)
    with torch.no_grad():
        for score in masks.scores:
            score.fill_(1.0)
    batch = select_rows(pairs.train, torch.arange(min(len(pairs.train), len(pairs.selection))))
    with frozen(model):
        masks.tiebreak = unit_attribution(model, masks, batch).abs()
    return masks


def choose(masks: NodeMasks, selection: MaskedEvaluator, cfg: PruneConfig) -> tuple[dict[str, Tensor], dict]:
    """The pruner's stages 2 and 4 over `masks`' ranking (`prune.search_units`, node cleanup as `cfg` says):
    the chosen node masks and what the search found."""
    units, found = search_units(masks, selection, cfg)
    return masks.node_masks(units), found


def attribution_circuit(
    model: SparseTransformer,
    learned: Circuit,
    pairs: PrunePairs,
    target_loss: float | None = None,
    cleanup: bool = False,
) -> Circuit:
    """The Figure 31 baseline's circuit: the fewest top units by |attribution| with every node kept that reach
    `target_loss` (default: the learned circuit's), calibrated as the pruner calibrates; with `cleanup`, the
    pruner's greedy node cleanup too (the paper's baseline has none). `learned` and `pairs` are a pruning run's,
    so both methods share pairs, ablation constants and search settings. The circuit's `scores` are the
    |attributions|, so `prune.loss_vs_nodes` follows the attribution order."""
    target_loss = learned.target_loss if target_loss is None else target_loss
    cfg = dataclasses.replace(PruneConfig.of_circuit(learned), target_loss=target_loss, cleanup=cleanup)
    masks = attribution_masks(model, learned, pairs)
    with frozen(model):
        selection, test = cfg.evaluator(model, masks, pairs.selection), cfg.evaluator(model, masks, pairs.test)
        node_masks, found = choose(masks, selection, cfg)
        selection_loss, calibration = selection.fit(node_masks)
        per_node = masks.tiebreak[masks.unit_of].split([mask.numel() for mask in node_masks.values()])
        bool_masks = {name: mask.bool() for name, mask in node_masks.items()}
        return Circuit(
            task_name=learned.task_name,
            masks=bool_masks,
            ablation_values=learned.ablation_values,
            ablation=learned.ablation,
            target_loss=target_loss,
            task_loss=test.loss(node_masks, calibration),
            full_model_loss=learned.full_model_loss,  # both measured on the same test pairs
            ablated_model_loss=learned.ablated_model_loss,
            necessity_loss=test.loss(node_masks, invert=True),
            edges=circuit_edges(model, bool_masks),
            scores={name: part.view_as(mask) for (name, mask), part in zip(node_masks.items(), per_node, strict=True)},
            config={**dataclasses.asdict(cfg), "ranking": "attribution"},
            calibration=calibration,
            selection_loss=selection_loss,
            uncalibrated_loss=test.loss(node_masks),
            search=found,
        )


def edges_vs_loss(
    model: SparseTransformer, learned: Circuit, pairs: PrunePairs, target_losses: Sequence[float] = (0.3, 0.15, 0.08)
) -> pd.DataFrame:
    """Circuit size against held-out loss for learned pruning and the attribution baseline (the paper's Figure 31):
    for each method and target loss, the smallest top-k of the method's ranking that reaches the target on
    selection pairs, its nodes, edges, and calibrated loss on test pairs. No cleanup for either: this compares the
    rankings. `learned` and `pairs` are one pruning run's (the learned ranking is the one its search used)."""
    methods = {"learned": learned_masks(model, learned, pairs), "attribution": attribution_masks(model, learned, pairs)}
    cfg = dataclasses.replace(PruneConfig.of_circuit(learned), cleanup=False)
    rows = []
    with frozen(model):
        for method, masks in methods.items():
            selection, test = cfg.evaluator(model, masks, pairs.selection), cfg.evaluator(model, masks, pairs.test)
            for target in target_losses:
                node_masks, found = choose(masks, selection, dataclasses.replace(cfg, target_loss=target))
                calibration = selection.fit(node_masks)[1]
                rows.append(
                    {
                        "method": method,
                        "target_loss": target,
                        "units": found["units"],
                        "nodes": found["nodes"],
                        "edges": len(circuit_edges(model, {name: mask.bool() for name, mask in node_masks.items()})),
                        "test_loss": test.loss(node_masks, calibration),
                    }
                )
    return pd.DataFrame(rows)
