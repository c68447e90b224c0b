"""The pruner: its pieces on their own, and a real circuit found in the shipped sparse model."""

import pytest
import torch

from circuitlab import SparseTransformer, prune, tasks
from circuitlab.paths import CHECKPOINTS_DIR
from circuitlab.prune import (
    HeavisideSigmoidGrad,
    PruneConfig,
    bisect_smallest,
    last_position_logits,
    length_buckets,
    node_shapes,
)
from circuitlab.tasks import task_loss


def test_heaviside_forward_sigmoid_derivative_backward():
    scores = torch.tensor([-0.5, 0.0, 0.2], requires_grad=True)
    kept = HeavisideSigmoidGrad.apply(scores)
    assert torch.equal(kept, torch.tensor([0.0, 0.0, 1.0]))
    kept.sum().backward()
    sigmoid = torch.sigmoid(torch.tensor([-0.5, 0.0, 0.2]))
    torch.testing.assert_close(scores.grad, sigmoid * (1 - sigmoid))


def test_bisection_finds_the_smallest_sufficient_count():
    calls = []

    def loss(k):
        calls.append(k)
        return 1.0 / (1 + k)

    assert bisect_smallest(loss, target=0.1, n_total=1000) == 9
    assert len(calls) <= 12
    assert bisect_smallest(lambda k: 0.5, target=0.1, n_total=50) == 50  # unreachable: keep everything


def test_config_rejects_unknown_ablation():
    with pytest.raises(ValueError, match="ablation='median'"):
        PruneConfig(ablation="median")


@pytest.fixture(scope="module")
def sparse_model() -> SparseTransformer:
    return SparseTransformer.from_pretrained(CHECKPOINTS_DIR / "sparse")


def test_last_position_logits_and_buckets_give_the_full_task_loss(sparse_model):
    batch = tasks.get("bracket_counting").batch(sparse_model.tokenizer, "test", 12, n_ctx=sparse_model.cfg.n_ctx)
    full = task_loss(sparse_model(batch.tokens), batch, reduction="none")
    logits, reindexed = last_position_logits(sparse_model, batch)
    torch.testing.assert_close(task_loss(logits, reindexed, reduction="none"), full, atol=1e-5, rtol=0)
    buckets = length_buckets(batch, 3)
    assert sum(len(b) for b in buckets) == len(batch)
    assert all(b.tokens.shape[1] == int(b.last.max()) + 1 for b in buckets)
    bucket_total = sum(task_loss(sparse_model(b.tokens), b, reduction="sum").item() for b in buckets)
    assert bucket_total == pytest.approx(full.sum().item(), abs=1e-4)


@pytest.mark.slow
def test_prune_finds_a_small_sufficient_and_necessary_circuit(sparse_model):
    circuit = prune(sparse_model, tasks.get("single_double_quote"), progress=False)
    total = sum(torch.Size(shape).numel() for shape in node_shapes(sparse_model).values())
    assert circuit.task_loss <= 0.15 < circuit.ablated_model_loss
    assert circuit.n_nodes < 0.05 * total
    assert circuit.necessity_loss > 0.4  # ablating just the circuit breaks the task
    again = prune(sparse_model, tasks.get("single_double_quote"), progress=False)
    assert again.nodes == circuit.nodes  # seeded and deterministic
