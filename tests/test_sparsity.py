"""Weight top-k projection and the schedules of the weight-sparse recipe."""

import math

import pytest
import torch

from circuitlab.sparsity import l0_schedule, lr_schedule, normalize_gradients_, project_topk_, topk_mask


def test_topk_mask_keeps_exactly_the_largest_magnitudes():
    weight = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    mask = topk_mask(weight, l0=0.1, residual_axis=0, min_per_unit=0)
    k = math.ceil(0.1 * weight.numel())
    assert mask.sum() == k
    assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


def reference_mask(weight: torch.Tensor, l0: float, residual_axis: int, min_per_unit: int) -> torch.Tensor:
    """The rule spelled out with a full sort: global top-k united with every unit's own top-min_per_unit."""
    k = math.ceil(l0 * weight.numel())
    mask = torch.zeros(weight.numel(), dtype=torch.bool)
    mask[weight.abs().flatten().argsort(descending=True)[:k]] = True
    by_unit = weight.abs().movedim(residual_axis, -1)
    unit_mask = torch.zeros_like(by_unit, dtype=torch.bool)
    unit_mask.scatter_(-1, by_unit.argsort(dim=-1, descending=True)[..., :min_per_unit], True)
    return mask.view_as(weight) | unit_mask.movedim(-1, residual_axis)


@pytest.mark.parametrize(
    ("shape", "axis", "l0"),
    [((8, 32, 4), 1, 0.05), ((4, 4, 32), 2, 0.1), ((32, 64), 0, 0.02), ((64, 32), 1, 0.3), ((50, 16), 1, 0.01)],
)
def test_topk_mask_is_the_union_of_global_and_per_unit_topk(shape, axis, l0):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert torch.equal(topk_mask(weight, l0, axis, min_per_unit=4), reference_mask(weight, l0, axis, 4))


def test_every_unit_keeps_its_minimum_number_of_weights():
    weight = torch.randn(4, 32, 8, generator=torch.Generator().manual_seed(1))  # like W_Q [heads, d_model, d_head]
    weight[:, :, 0] *= 1e-3  # channel 0 of every head would lose all its weights to plain top-k
    mask = topk_mask(weight, l0=0.02, residual_axis=1, min_per_unit=4)
    per_unit = mask.sum(dim=1)  # [heads, d_head]: weights kept along the residual axis
    assert torch.all(per_unit >= 4)
    assert mask.sum() <= math.ceil(0.02 * weight.numel()) + 4 * 4 * 8


def test_projection_zeroes_in_place_and_pruned_weights_can_regrow():
    param = torch.nn.Parameter(torch.tensor([[1.0, -0.1, 0.5, 0.05], [0.2, -2.0, 0.01, 0.3]]))
    nonzero = project_topk_({"blocks.0.mlp.W_in": (param, 0)}, l0_hidden=0.5, l0_embed=1.0, min_per_unit=0)
    assert nonzero == 4
    assert torch.equal(param.data, torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, -2.0, 0.0, 0.3]]))
    with torch.no_grad():  # an optimizer step pushes a pruned weight past the smallest kept one
        param[0, 1] = -0.9
    project_topk_({"blocks.0.mlp.W_in": (param, 0)}, l0_hidden=0.5, l0_embed=1.0, min_per_unit=0)
    assert param[0, 1] == -0.9 and param[1, 3] == 0


def test_projecting_a_model_prunes_every_weight_matrix_and_nothing_else(tiny_model):
    dense_before = {name: p.clone() for name, p in tiny_model.named_parameters()}
    nonzero = project_topk_(tiny_model.weight_matrices(), l0_hidden=0.125, l0_embed=0.5, min_per_unit=4)
    matrices = tiny_model.weight_matrices()
    assert nonzero == sum(int((p != 0).sum()) for p, _ in matrices.values())
    for name, param in tiny_model.named_parameters():
        if name in matrices:
            expected = reference_mask(dense_before[name], 0.5 if "embed" in name else 0.125, matrices[name][1], 4)
            assert torch.equal(param != 0, expected), name
            assert torch.equal(param[expected], dense_before[name][expected]), name
        else:  # biases, norms, sinks and the bigram table stay dense and untouched
            assert torch.equal(param, dense_before[name]), name


def test_embeddings_use_their_own_density():
    hidden = torch.nn.Parameter(torch.randn(16, 16))
    embed = torch.nn.Parameter(torch.randn(16, 16))
    project_topk_({"blocks.0.attn.W_O": (hidden, 1), "embed.W_E": (embed, 1)}, 0.25, 0.5, 0)
    assert (hidden != 0).sum() == 64 and (embed != 0).sum() == 128


def test_l0_anneal_is_dense_then_linear_then_flat():
    assert l0_schedule(0, 1000, 0.1) == 1.0
    assert l0_schedule(10, 1000, 0.1) == 1.0
    assert l0_schedule(255, 1000, 0.1) == pytest.approx(1 - 0.9 * 245 / 490)
    assert l0_schedule(500, 1000, 0.1) == pytest.approx(0.1)
    assert l0_schedule(999, 1000, 0.1) == pytest.approx(0.1)


def test_sharkfin_learning_rate():
    assert lr_schedule(0, 1000, 1.0, 0.01, l0_now=1.0, l0_final=0.25) == pytest.approx(0.1 * 0.5)
    assert lr_schedule(9, 1000, 1.0, 0.01, l0_now=1.0, l0_final=0.25) == pytest.approx(0.5)
    assert lr_schedule(500, 1000, 1.0, 0.01, l0_now=0.25, l0_final=0.25) == pytest.approx(500 / 990)
    assert lr_schedule(1000, 1000, 1.0, 0.01, l0_now=0.25, l0_final=0.25) == 0.0
    assert lr_schedule(100, 1000, 2.0) == pytest.approx(2.0 * 900 / 990)  # dense: no sharkfin factor


def test_gradients_are_rescaled_to_global_rms_one():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(5))
    a.grad, b.grad = torch.full((3,), 4.0), torch.full((5,), 2.0)
    before = normalize_gradients_([a, b])
    assert before == pytest.approx(math.sqrt((3 * 16 + 5 * 4) / 8))
    total = torch.cat([a.grad, b.grad])
    assert total.pow(2).mean().sqrt().item() == pytest.approx(1.0)
