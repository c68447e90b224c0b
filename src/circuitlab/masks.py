"""Node masks and what they cost: keep or ablate each node at its hook point, and measure the task loss.

`NodeMasks` holds one learnable score per unit (the pruner trains them); `MaskedEvaluator` measures a fixed
set of 0/1 masks on one batch of contrast pairs, calibrated or not, for the price of one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from circuitlab.circuit import (
    Calibration,
    constant_writes,
    keep_or_ablate,
    last_position_logits,
    node_shapes,
    skippable,
)
from circuitlab.model import SparseTransformer
from circuitlab.tasks import TaskBatch, length_buckets, pair_rows, select_rows

ABLATIONS = ("mean", "zero", "task_mean")
PROBE_SHARES = (0.0625, 0.125, 0.25, 0.5)  # early rejection's growing probes, as shares of the pairs
PAIR_WITHIN = 16  # early rejection pairs a trial with its reference only when they differ in fewer nodes


class HeavisideSigmoidGrad(torch.autograd.Function):
    """Heaviside step forward (score > 0 keeps the node); backward, the derivative of sigmoid(score / temp)."""

    @staticmethod
    def forward(ctx, scores: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(scores)
        ctx.temperature = temperature
        return (scores > 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (scores,) = ctx.saved_tensors
        sigmoid = (scores / ctx.temperature).sigmoid()
        return grad * sigmoid * (1 - sigmoid) / ctx.temperature, None


@torch.no_grad()
def ablation_values(
    model: SparseTransformer,
    ablation: str,
    pretraining_tokens: Tensor | None = None,
    task_batch: TaskBatch | None = None,
) -> dict[str, Tensor]:
    """The constant each node is replaced by when pruned: zero, or its mean over text or over task prompts."""
    shapes = node_shapes(model)
    if ablation == "zero":
        return {name: torch.zeros(shape) for name, shape in shapes.items()}
    if ablation == "mean":
        if pretraining_tokens is None:
            raise ValueError("Mean ablation needs pretraining_tokens (a [batch, pos] sample of pretraining text).")
        check_token_range(pretraining_tokens, model.cfg.d_vocab, "pretraining_tokens")
        tokens, valid = pretraining_tokens, torch.ones(pretraining_tokens.shape, dtype=torch.bool)
    elif ablation == "task_mean":
        if task_batch is None:
            raise ValueError("Task-mean ablation needs a task_batch.")
        tokens = task_batch.tokens
        valid = torch.arange(tokens.shape[1])[None] <= task_batch.last[:, None]
    else:
        raise ValueError(f"ablation={ablation!r}; choose one of {ABLATIONS}")
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in shapes)
    weights = valid.float()
    return {name: torch.einsum("bp...,bp->...", cache[name], weights) / weights.sum() for name in shapes}


def check_token_range(tokens: Tensor, d_vocab: int, what: str) -> None:
    """ValueError naming `what` when a token id falls outside the model's vocabulary."""
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise ValueError(
            f"{what} holds token ids in [{int(tokens.min())}, {int(tokens.max())}] but the model's vocabulary is "
            f"[0, {d_vocab}); pass tokens made with the model's own tokenizer (for a model with its own "
            "vocabulary, pass pretraining_tokens= explicitly)."
        )


class NodeMasks(nn.Module):
    """One learnable score per *unit* (a node, or a q/k pair with `tie_qk`); `hooks()` keeps or ablates nodes.

    Nodes are numbered in hook order (the concatenation of every node location's channels); units are the
    entries of the score parameters, and `unit_of[node]` says which unit decides each node. Scores start at
    `init_mean` ± `init_std` (seeded); `PruneConfig.new_masks` passes its own settings.
    """

    def __init__(
        self,
        model: SparseTransformer,
        means: dict[str, Tensor],
        *,
        init_mean: float,
        init_std: float,
        heaviside_temp: float,
        tie_qk: bool,
        seed: int,
    ):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        shapes = node_shapes(model)
        self.names = list(shapes)
        self.means = means
        self.temperature = heaviside_temp
        self.param_of: dict[str, int] = {}
        params: list[nn.Parameter] = []
        for name, shape in shapes.items():
            if tie_qk and name.endswith("attn.hook_k"):
                self.param_of[name] = self.param_of[name.replace("hook_k", "hook_q")]
                continue
            self.param_of[name] = len(params)
            params.append(nn.Parameter(init_mean + init_std * torch.randn(shape, generator=generator)))
        self.scores = nn.ParameterList(params)
        offsets = [0]
        for param in params:
            offsets.append(offsets[-1] + param.numel())
        self.unit_of = torch.cat(
            [torch.arange(offsets[i], offsets[i + 1]) for i in (self.param_of[name] for name in self.names)]
        )
        self.n_units = offsets[-1]
        self.fixed: dict[str, Tensor] | None = None  # masks (hook name -> 0/1) that override the scores when set
        self.tiebreak = torch.zeros(self.n_units)  # secondary ranking key, e.g. gradient attribution

    @property
    def n_nodes(self) -> int:
        return len(self.unit_of)

    def keep(self, name: str) -> Tensor:
        if self.fixed is not None:
            return self.fixed[name]
        return HeavisideSigmoidGrad.apply(self.scores[self.param_of[name]], self.temperature)

    def n_kept(self) -> Tensor:
        return torch.stack([self.keep(name).sum() for name in self.names]).sum()

    def hooks(self) -> list[tuple[str | Callable, Callable]]:
        def make_hook(name: str) -> Callable:
            def hook(activation: Tensor, hook) -> Tensor:
                return keep_or_ablate(activation, self.keep(name), self.means[name])

            return hook

        return [(name, make_hook(name)) for name in self.names]

    def unit_scores(self) -> Tensor:
        return torch.cat([score.detach().flatten() for score in self.scores])

    def ranking(self) -> Tensor:
        """Units, most needed first: by score, ties (scores pinned at the clamp) broken by `tiebreak`."""
        by_tiebreak = self.tiebreak.argsort(descending=True, stable=True)
        return by_tiebreak[self.unit_scores()[by_tiebreak].argsort(descending=True, stable=True)]

    def node_masks(self, units: Tensor | Sequence[int]) -> dict[str, Tensor]:
        """Float 0/1 node masks (hook name -> mask) keeping the nodes of the given units."""
        keep_unit = torch.zeros(self.n_units)
        keep_unit[torch.as_tensor(units, dtype=torch.long)] = 1.0
        flat = keep_unit[self.unit_of]
        sizes = [self.means[name].numel() for name in self.names]
        return {
            name: part.view(self.means[name].shape) for name, part in zip(self.names, flat.split(sizes), strict=True)
        }

    def highest(self, k: int) -> dict[str, Tensor]:
        """Node masks keeping the k highest-ranked units."""
        return self.node_masks(self.ranking()[:k])

    def load_scores(self, saved: dict[str, Tensor]) -> None:
        """Copy saved per-hook scores in (matched by hook name, so the order they were saved in is irrelevant)."""
        missing = [name for name in self.names if name not in saved]
        if missing:
            raise ValueError(f"saved scores lack {len(missing)} node locations, e.g. {missing[0]!r}")
        with torch.no_grad():
            for name in self.names:
                self.scores[self.param_of[name]].copy_(saved[name])


class MaskedEvaluator:
    """Task losses of one batch under fixed node masks, with and without a fitted calibration.

    The candidate logits of each forward pass are all that is kept, so a calibration can be fitted and a
    loss computed for the price of one pass. `passes` counts passes over the whole batch (a pass that stopped
    early counts the share it ran): they are most of a pruning run's time.

    **Early rejection.** The pruner's search and cleanup try hundreds of masks, and most fail. A call that
    passes `reject_above` measures the masks first on growing probes of the pairs (`probe_shares` of them,
    drawn at random once per evaluator) and stops as soon as the loss is clearly above `reject_above`: its
    estimate minus `reject_z` standard errors still lies above. The estimate is paired: the whole-batch loss of
    the last masks such a call measured in full, plus the mean per-prompt change from them on the probe, which
    is far less noisy than the probe's own mean when the two masks differ in a few nodes (the first such call
    uses the probe's mean). Pairing pays only near the reference: masks `pair_within` nodes or more apart (the
    search's scan, which jumps by dozens of nodes) can change the loss of a few prompts a lot, which a small probe
    misses, and their paired spread looks far smaller than it is; they are judged on the probe's own mean, with a
    spread at least the reference's own per-prompt spread. The standard error counts only the prompts not yet
    measured (a finite-population correction), so a probe of half the pairs can stop the trials that miss by a
    little. A stopped call returns that estimate, which lies above `reject_above` (the probe's own mean may not);
    masks that pass are always measured on the whole batch, so every loss at or under `reject_above` is the
    whole batch's.

    A sub-layer whose write channels the masks ablate whole writes its ablation constant whatever it computes,
    so it is not computed (`constant_writes`), and every sub-layer after the last attention still computed runs
    on the prompts' last positions alone (`last_position_logits`): a pass over a circuit that lives in a few
    sub-layers costs a fraction of the whole model's, for the same losses up to float rounding.

    With `audit` set, a stopped call also measures the rest of the batch (not counted in `passes`) and appends
    what it estimated and what the whole batch gives to `audits`: a stop whose whole-batch loss is at or under
    `reject_above` was a false rejection.
    """

    audit = False  # measure stopped calls in full too, to check the rule (`benchmarks/early_rejection.py`)

    def __init__(
        self,
        model: SparseTransformer,
        masks: NodeMasks,
        batch: TaskBatch,
        probe_shares: tuple[float, ...] = PROBE_SHARES,
        reject_z: float = 2.5,
        pair_within: int = PAIR_WITHIN,
    ):
        if len(batch) % 2:
            raise ValueError(
                f"the batch has {len(batch)} prompts; a MaskedEvaluator needs contrast pairs (a pair's two "
                "prompts in adjacent rows), so an even number"
            )
        self.model, self.masks, self.batch = model, masks, batch
        self.reject_z, self.pair_within = reject_z, pair_within
        self.passes = 0.0
        self.rejected = 0  # calls stopped on a probe
        self.references: dict[str, Tensor] = {}  # per-prompt losses of the last masks measured in full, per call
        self.reference_masks: dict[str, Tensor] = {}  # and those masks, flat, as applied
        self.audits: list[dict[str, float]] = []  # with `audit`: every stopped call's estimate and true loss
        n_pairs = len(batch) // 2
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(0))
        bounds = sorted({b for b in (round(share * n_pairs) for share in probe_shares) if 0 < b < n_pairs})
        bounds.append(n_pairs)
        self.parts = [
            length_buckets(select_rows(batch, pair_rows(order[a:b])))
            for a, b in zip([0, *bounds[:-1]], bounds, strict=True)
        ]
        self.targets = [torch.cat([b.target for b in part]) for part in self.parts]
        self.alternatives = [torch.cat([b.alternative for b in part]) for part in self.parts]

    @torch.no_grad()
    def margins(self, node_masks: dict[str, Tensor] | None, invert: bool = False, parts: slice = slice(None)) -> Tensor:
        """target minus alternative logit per prompt (part by part, each in bucket order) with `node_masks`
        applied (None: none), over the given parts (default: all)."""
        fixed: dict[str, Tensor] | None = None
        writes: dict[str, Tensor] = {}
        hooks: list = []
        if node_masks is not None:
            fixed = {k: 1 - v for k, v in node_masks.items()} if invert else node_masks
            writes, needed = skippable(fixed, self.masks.means)
            hooks = [hook for hook, name in zip(self.masks.hooks(), self.masks.names, strict=True) if name in needed]
        out = []
        self.masks.fixed = fixed
        try:
            with constant_writes(self.model, writes), self.model.hooks(fwd_hooks=hooks):
                for part in self.parts[parts]:
                    self.passes += sum(len(b) for b in part) / len(self.batch)
                    for bucket in part:
                        logits, _ = last_position_logits(self.model, bucket)
                        rows = torch.arange(len(bucket))
                        out.append(logits[rows, 0, bucket.target] - logits[rows, 0, bucket.alternative])
        finally:
            self.masks.fixed = None
        return torch.cat(out)

    def loss(
        self,
        node_masks: dict[str, Tensor] | None,
        calibration: Calibration | None = None,
        invert: bool = False,
        reject_above: float | None = None,
    ) -> float:
        """Mean task loss under `node_masks` (calibrated when a calibration is given); `reject_above`: stop early
        when the loss is clearly above it (see the class)."""

        def per_prompt(margins: Tensor, parts: slice) -> tuple[Tensor, None]:
            if calibration is not None:
                margins = calibration.margins(margins, *self.candidates(parts))
            return torch.nn.functional.softplus(-margins), None

        losses, _ = self._measure(node_masks, invert, reject_above, per_prompt, "loss")
        return losses.mean().item()

    def fit(self, node_masks: dict[str, Tensor], reject_above: float | None = None) -> tuple[float, Calibration]:
        """The calibrated loss of `node_masks` on this batch and the calibration that reaches it; `reject_above`:
        stop early when the loss is clearly above it (then both come from the probe; see the class)."""

        def per_prompt(margins: Tensor, parts: slice) -> tuple[Tensor, Calibration]:
            target, alternative = self.candidates(parts)
            calibration = Calibration.fit(margins, target, alternative)
            return torch.nn.functional.softplus(-calibration.margins(margins, target, alternative)), calibration

        losses, calibration = self._measure(node_masks, False, reject_above, per_prompt, "fit")
        return losses.mean().item(), calibration

    def candidates(self, parts: slice) -> tuple[Tensor, Tensor]:
        """Target and alternative token per prompt of the given parts, in the order `margins` returns them."""
        return torch.cat(self.targets[parts]), torch.cat(self.alternatives[parts])

    def _measure(
        self,
        node_masks: dict[str, Tensor] | None,
        invert: bool,
        reject_above: float | None,
        per_prompt: Callable[[Tensor, slice], tuple[Tensor, Any]],
        kind: str,
    ) -> tuple[Tensor, Any]:
        """Per-prompt losses (and what `per_prompt` returns beside them) on the whole batch, or on a probe that
        is clearly above `reject_above`."""
        margins, n_probes = [], len(self.parts) - 1 if reject_above is not None else 0
        applied = self._applied(node_masks, invert)
        reference = self.references.get(kind)
        paired = reference is not None and int((applied != self.reference_masks[kind]).sum()) < self.pair_within
        for i in range(n_probes):
            margins.append(self.margins(node_masks, invert, slice(i, i + 1)))
            losses, extra = per_prompt(torch.cat(margins), slice(0, i + 1))
            assert reject_above is not None  # probes are measured only when there is something to reject
            estimate = self._estimate_if_clearly_above(losses, reject_above, reference, paired)
            if estimate is not None:
                self.rejected += 1
                if self.audit:
                    self._audit(node_masks, invert, margins, per_prompt, i, estimate, reject_above)
                return torch.full_like(losses, estimate), extra
        margins.append(self.margins(node_masks, invert, slice(n_probes, None)))
        losses, extra = per_prompt(torch.cat(margins), slice(None))
        if reject_above is not None:
            self.references[kind], self.reference_masks[kind] = losses, applied
        return losses, extra

    def _applied(self, node_masks: dict[str, Tensor] | None, invert: bool) -> Tensor:
        """The 0/1 masks a call applies, flat in hook order (None: every node kept)."""
        if node_masks is None:
            return torch.ones(self.masks.n_nodes)
        flat = torch.cat([node_masks[name].flatten() for name in self.masks.names])
        return 1 - flat if invert else flat

    def _audit(
        self,
        node_masks: dict[str, Tensor] | None,
        invert: bool,
        margins: list[Tensor],
        per_prompt: Callable[[Tensor, slice], tuple[Tensor, Any]],
        probe: int,
        estimate: float,
        threshold: float,
    ) -> None:
        """Record a stopped call's estimate beside its whole-batch loss (the rest of the batch is not counted)."""
        passes = self.passes
        rest = self.margins(node_masks, invert, slice(probe + 1, None))
        self.passes = passes
        losses, _ = per_prompt(torch.cat([*margins, rest]), slice(None))
        self.audits.append({"probe": probe, "estimate": estimate, "loss": losses.mean().item(), "threshold": threshold})

    def _estimate_if_clearly_above(
        self, losses: Tensor, threshold: float, reference: Tensor | None, paired: bool = True
    ) -> float | None:
        """The whole batch's loss estimated from the probe's per-prompt `losses` (`paired` with the `reference`'s
        on the same prompts, or on their own with at least the reference's spread), when it lies above `threshold`
        by `reject_z` standard errors; else None."""
        if reference is not None and paired:
            change = losses - reference[: len(losses)]
            estimate, spread = reference.mean() + change.mean(), change.std()
        else:
            estimate, spread = losses.mean(), losses.std()
            if reference is not None:
                spread = torch.maximum(spread, reference.std())
        unmeasured = 1 - len(losses) / len(self.batch)  # the share of the whole batch's mean still unknown
        clearly_above = bool(estimate - self.reject_z * spread * (unmeasured / len(losses)) ** 0.5 > threshold)
        return estimate.item() if clearly_above else None
