"""Find a task's circuit: learn a keep/ablate mask over nodes, then bisect for the fewest nodes that suffice.

The paper's method. Each node (one channel at one of the eight node locations of one layer) gets a score
τ. The forward pass keeps a node when τ > 0 and otherwise replaces its activation by a constant (its mean
over pretraining text, by default); the backward pass pretends the step was a sigmoid. The loss is the task
loss plus a penalty per kept node. Afterwards the nodes are sorted by τ and we bisect for the smallest
number kept whose held-out task loss is at most the target. The model's weights stay frozen and AbsTopK
still applies; masks act at the node hook points, so everything here is ordinary hook-based ablation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from circuitlab.circuit import Circuit, circuit_edges, node_shapes
from circuitlab.model import SparseTransformer
from circuitlab.tasks import Task, TaskBatch, task_loss

ABLATIONS = ("mean", "zero", "task_mean")


@dataclass
class PruneConfig:
    """Pruning hyper-parameters: the paper's optimiser and penalty, with a CPU-sized number of steps."""

    target_loss: float = 0.15  # per-prompt binary cross-entropy the circuit must reach on held-out pairs
    ablation: str = "mean"  # "mean" over pretraining text, "zero", or "task_mean" over task prompts
    steps: int = 160
    pairs_per_step: int = 16  # contrast pairs per batch (two prompts each)
    train_pairs: int = 512
    test_pairs: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-3
    beta2: float = 0.95
    warmup_frac: float = 0.05
    # Added loss per kept node. Too large and every score falls below zero within a few steps, before the
    # task gradient can tell nodes apart: the run ends at chance with a meaningless order (1e-3 does this
    # to the handbook's dense model; 3e-4 leaves a small circuit at a training loss near 0.01).
    penalty: float = 3e-4
    init_mean: float = 0.1
    init_std: float = 0.01
    mean_batches: int = 4  # pretraining batches of [16, n_ctx] tokens to average for "mean" ablation
    seed: int = 0
    skip_unsolved: bool = True  # when the full model misses the target, keep every node without training masks

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation={self.ablation!r}; choose one of {ABLATIONS}")


class HeavisideSigmoidGrad(torch.autograd.Function):
    """Heaviside step forward (score > 0 keeps the node), the sigmoid's derivative backward."""

    @staticmethod
    def forward(ctx, scores: Tensor) -> Tensor:
        ctx.save_for_backward(scores)
        return (scores > 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (scores,) = ctx.saved_tensors
        sigmoid = scores.sigmoid()
        return grad * sigmoid * (1 - sigmoid)


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


class NodeMasks(nn.Module):
    """One learnable score per node; `hooks()` gives forward hooks that keep or ablate each node."""

    def __init__(self, model: SparseTransformer, means: dict[str, Tensor], cfg: PruneConfig):
        super().__init__()
        generator = torch.Generator().manual_seed(cfg.seed)
        self.names = list(node_shapes(model))
        self.scores = nn.ParameterList(
            nn.Parameter(cfg.init_mean + cfg.init_std * torch.randn(shape, generator=generator))
            for shape in node_shapes(model).values()
        )
        self.means = means
        self.fixed: dict[str, Tensor] | None = None  # binary masks that override the scores when set

    def keep(self, index: int) -> Tensor:
        if self.fixed is not None:
            return self.fixed[self.names[index]]
        return HeavisideSigmoidGrad.apply(self.scores[index])

    def n_kept(self) -> Tensor:
        return sum(self.keep(i).sum() for i in range(len(self.names)))

    def hooks(self) -> list[tuple[str, Callable]]:
        def make_hook(index: int) -> Callable:
            name = self.names[index]

            def hook(activation: Tensor, hook) -> Tensor:
                keep = self.keep(index)
                return activation * keep + self.means[name] * (1 - keep)

            return hook

        return [(name, make_hook(i)) for i, name in enumerate(self.names)]

    def flat_scores(self) -> Tensor:
        return torch.cat([s.detach().flatten() for s in self.scores])

    def highest(self, k: int) -> dict[str, Tensor]:
        """Binary masks (hook name -> 0/1) keeping the k highest-scoring nodes; ties keep their node order."""
        flat = self.flat_scores()
        keep = torch.zeros(len(flat))
        keep[flat.argsort(descending=True, stable=True)[:k]] = 1.0
        parts = keep.split([score.numel() for score in self.scores])
        return {name: part.view(score.shape) for name, part, score in zip(self.names, parts, self.scores, strict=True)}


def select_rows(batch: TaskBatch, rows: Tensor) -> TaskBatch:
    """The given rows of a batch, with the padding columns none of them needs cut off."""
    last = batch.last[rows]
    return TaskBatch(batch.tokens[rows, : int(last.max()) + 1], last, batch.target[rows], batch.alternative[rows])


def length_buckets(batch: TaskBatch, n_buckets: int = 4) -> list[TaskBatch]:
    """The batch split into groups of similar prompt length, so little compute is spent on padding."""
    order = batch.last.argsort()
    return [select_rows(batch, rows) for rows in order.tensor_split(min(n_buckets, len(order)))]


def last_position_logits(model: SparseTransformer, batch: TaskBatch) -> tuple[Tensor, TaskBatch]:
    """Logits at each prompt's last position only ([n, 1, vocab]) and the batch re-indexed to match: the
    unembedding of every other position would be wasted work."""
    resid = model(batch.tokens, stop_at=model.residual_sites[-1])
    rows = torch.arange(len(batch))
    logits = model.unembed_resid(resid[rows, batch.last][:, None], batch.tokens[rows, batch.last][:, None])
    return logits, TaskBatch(batch.tokens, torch.zeros_like(batch.last), batch.target, batch.alternative)


def masked_task_loss(model: SparseTransformer, masks: NodeMasks, batch: TaskBatch) -> Tensor:
    with model.hooks(fwd_hooks=masks.hooks()):
        return task_loss(*last_position_logits(model, batch))


@torch.no_grad()
def loss_with_masks(
    model: SparseTransformer, masks: NodeMasks, fixed: dict[str, Tensor], buckets: list[TaskBatch]
) -> float:
    """Mean task loss over length buckets with the given binary node masks."""
    masks.fixed = fixed
    try:
        total = sum(masked_task_loss(model, masks, bucket).item() * len(bucket) for bucket in buckets)
        return total / sum(len(bucket) for bucket in buckets)
    finally:
        masks.fixed = None


def learning_rate(step: int, cfg: PruneConfig) -> float:
    warmup = max(1, round(cfg.warmup_frac * cfg.steps))
    return cfg.lr * min(1.0, (step + 1) / warmup)


def prune(
    model: SparseTransformer,
    task: Task,
    cfg: PruneConfig | None = None,
    pretraining_tokens: Tensor | None = None,
    progress: bool = True,
    **overrides,
) -> Circuit:
    """Find the smallest set of nodes whose held-out task loss is at most `cfg.target_loss`.

    `pretraining_tokens` ([batch, pos]) are the text the "mean" ablation averages over; by default a
    sample of the validation corpus. Keyword overrides change single `PruneConfig` fields.
    """
    cfg = PruneConfig(**{**asdict(cfg or PruneConfig()), **overrides})
    model.eval().requires_grad_(False)
    tokenizer = model.tokenizer
    train = task.batch(tokenizer, "train", cfg.train_pairs, seed=cfg.seed, n_ctx=model.cfg.n_ctx)
    test_batch = task.batch(tokenizer, "test", cfg.test_pairs, seed=cfg.seed, n_ctx=model.cfg.n_ctx)
    test = length_buckets(test_batch)
    if cfg.ablation == "mean" and pretraining_tokens is None:
        pretraining_tokens = sample_pretraining_tokens(model, cfg.mean_batches * 16, cfg.seed)
    means = ablation_values(model, cfg.ablation, pretraining_tokens, train)
    masks = NodeMasks(model, means, cfg)
    n_total = sum(s.numel() for s in masks.scores)

    @functools.cache
    def loss_keeping(k: int) -> float:
        """Held-out loss keeping the k highest-scoring nodes. Only k = n_total (every node) does not depend
        on the scores, so that is the one value asked for before the masks are trained."""
        return loss_with_masks(model, masks, masks.highest(k), test)

    full_model_loss = loss_keeping(n_total)
    history = []
    if full_model_loss <= cfg.target_loss or not cfg.skip_unsolved:
        history = train_masks(model, masks, train, cfg, progress, desc=f"prune {task.name}")
    k = bisect_smallest(loss_keeping, cfg.target_loss, n_total)
    node_masks = {name: mask.bool() for name, mask in masks.highest(k).items()}
    circuit = Circuit(
        task_name=task.name,
        masks=node_masks,
        ablation_values=means,
        ablation=cfg.ablation,
        target_loss=cfg.target_loss,
        task_loss=loss_keeping(k),
        full_model_loss=full_model_loss,
        ablated_model_loss=loss_keeping(0),
        edges=circuit_edges(model, node_masks),
        scores={name: s.detach().clone() for name, s in zip(masks.names, masks.scores, strict=True)},
        history=history,
        config=asdict(cfg),
    )
    circuit.necessity_loss = circuit.loss(model, test_batch, invert=True)
    return circuit


def train_masks(
    model: SparseTransformer, masks: NodeMasks, train: TaskBatch, cfg: PruneConfig, progress: bool, desc: str
) -> list[dict]:
    """Optimise the node scores: task loss on training pairs plus the penalty per kept node."""
    optimizer = torch.optim.AdamW(masks.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = []
    for step in tqdm(range(cfg.steps), desc=desc, disable=not progress):
        rows = torch.randperm(len(train) // 2, generator=generator)[: cfg.pairs_per_step]
        batch = select_rows(train, torch.cat([2 * rows, 2 * rows + 1]))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        loss = masked_task_loss(model, masks, batch)
        kept = masks.n_kept()
        (loss + cfg.penalty * kept).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for score in masks.scores:
                score.clamp_(-1, 1)
        history.append({"step": step, "task_loss": loss.item(), "n_kept": int(kept.item())})
    return history


def bisect_smallest(loss_keeping: Callable[[int], float], target: float, n_total: int) -> int:
    """Smallest k in [0, n_total] with loss_keeping(k) <= target, assuming the loss falls as k grows
    (returns n_total when even the full model misses the target)."""
    low, high = 0, n_total
    if loss_keeping(high) > target:
        return n_total
    while low < high:
        middle = (low + high) // 2
        if loss_keeping(middle) <= target:
            high = middle
        else:
            low = middle + 1
    return low


def sample_pretraining_tokens(model: SparseTransformer, n_rows: int, seed: int) -> Tensor:
    """Rows of real validation text the size of the model's context, for mean ablation."""
    from circuitlab.corpus import TokenSampler, load_token_streams

    sampler = TokenSampler(load_token_streams(), "val", model.cfg.n_ctx, synthetic_fraction=0.0, seed=seed)
    return sampler.batch(0, n_rows)


@torch.no_grad()
def loss_vs_nodes(model: SparseTransformer, circuit: Circuit, batch: TaskBatch, ks: list[int]) -> list[float]:
    """Task loss when keeping the `k` highest-scoring nodes of `circuit`'s pruning run, for each k."""
    masks = NodeMasks(model, circuit.ablation_values, PruneConfig())
    for score, saved in zip(masks.scores, circuit.scores.values(), strict=True):
        score.copy_(saved)
    buckets = length_buckets(batch)
    return [loss_with_masks(model, masks, masks.highest(k), buckets) for k in ks]


def main(argv: list[str] | None = None) -> None:
    """Prune tasks on a checkpoint and save each circuit: the command that makes data/circuits/."""
    import argparse
    import json
    import time

    from circuitlab import tasks

    parser = argparse.ArgumentParser(description="Prune tasks on a model and save their circuits.")
    parser.add_argument("--model", required=True, help="checkpoint folder, e.g. data/checkpoints/sparse")
    parser.add_argument("--out", required=True, help="folder to write one circuit folder per task into")
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace circuits that already exist")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE", help="PruneConfig overrides"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults, overrides = asdict(PruneConfig()), {}
    for item in args.set:
        field, _, value = item.partition("=")
        if field not in defaults:
            parser.error(f"--set {item}: PruneConfig has no field {field!r}; fields: {', '.join(defaults)}")
        kind = type(defaults[field])
        overrides[field] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    model = SparseTransformer.from_pretrained(args.model)
    pretraining_tokens = sample_pretraining_tokens(model, PruneConfig().mean_batches * 16, seed=0)
    for name in args.tasks or tasks.names():
        out = Path(args.out) / name
        if (out / "circuit.json").exists() and not args.overwrite:
            print(f"{name}: exists, skipped (pass --overwrite to recompute)")
            continue
        start = time.perf_counter()
        circuit = prune(model, tasks.get(name), pretraining_tokens=pretraining_tokens, progress=False, **overrides)
        circuit.config["seconds"] = round(time.perf_counter() - start, 1)
        circuit.save(out, overwrite=args.overwrite)
        print(json.dumps({**circuit.summary(), "seconds": circuit.config["seconds"]}))


if __name__ == "__main__":
    main()
