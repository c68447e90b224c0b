"""The pruner: its pieces on their own, and a real circuit found in the shipped sparse model."""

import importlib
import math
from dataclasses import replace

import pytest
import torch

from circuitlab import SparseTransformer, prune, tasks
from circuitlab.circuit import (
    Calibration,
    Circuit,
    constant_writes,
    keep_or_ablate,
    last_position_logits,
    node_shapes,
    silent_nodes,
)
from circuitlab.discretize import geometric_grid, greedy_cleanup, smallest_sufficient
from circuitlab.masks import (
    HeavisideSigmoidGrad,
    MaskedEvaluator,
    ablation_values,
)
from circuitlab.paths import CHECKPOINTS_DIR, CIRCUITS_DIR
from circuitlab.prune import (
    PRETRAINING_ROWS,
    PruneConfig,
    PrunePairs,
    calibrated_loss,
    loss_vs_nodes,
    mean_ablation_tokens,
    sample_pretraining_tokens,
    search_units,
    trained_masks,
)
from circuitlab.settings import SettingsError, parse_overrides
from circuitlab.tasks import length_buckets, select_rows, task_loss


def test_heaviside_forward_sigmoid_derivative_backward_with_temperature():
    scores = torch.tensor([-0.5, 0.0, 0.2], requires_grad=True)
    kept = HeavisideSigmoidGrad.apply(scores, 0.5)
    assert torch.equal(kept, torch.tensor([0.0, 0.0, 1.0]))
    kept.sum().backward()
    sigmoid = torch.sigmoid(torch.tensor([-0.5, 0.0, 0.2]) / 0.5)
    torch.testing.assert_close(scores.grad, sigmoid * (1 - sigmoid) / 0.5)


def test_search_returns_the_first_crossing_of_a_non_monotone_curve():
    # The shape measured on bracket_counting: below target at 390-450, a hump above it up to 1,500.
    def loss(k):
        if k < 390:
            return 1.0
        if k <= 700:  # a dip wider than the scan's ratio (2) is found
            return 0.10
        return 0.20 if k < 1500 else 0.14

    assert smallest_sufficient(loss, target=0.15, n_total=1639) == 390
    # A plain bisection over [0, n] probes 819 (on the hump), moves up and returns a circuit 4x too large.
    low, high = 0, 1639
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if loss(middle) <= 0.15 else (middle + 1, high)
    assert low == 1500


def test_a_scan_growing_by_a_quarter_finds_a_dip_that_a_doubling_steps_over():
    # The shape measured on bracket_counting's trained masks: the loss holds at about 150-240 top units, misses
    # narrowly at 256-700, and holds again from about 750. A doubling scan probes 128 and 256, both misses.
    def loss(k):
        return 0.10 if 150 <= k <= 240 or k >= 750 else 0.14

    assert smallest_sufficient(loss, target=0.1275, n_total=1639, ratio=2.0) == 750
    assert smallest_sufficient(loss, target=0.1275, n_total=1639, ratio=PruneConfig().scan_ratio) == 150


def test_search_edge_cases():
    assert smallest_sufficient(lambda k: 0.5, target=0.1, n_total=50) == 50  # unreachable: keep everything
    assert smallest_sufficient(lambda k: 0.0, target=0.1, n_total=50) == 0  # nothing needed
    assert smallest_sufficient(lambda k: 1.0 / (1 + k), target=0.1, n_total=1000) == 9
    assert geometric_grid(10, 2.0) == [0, 1, 2, 4, 8, 10]
    with pytest.raises(ValueError, match="ratio=1"):
        geometric_grid(10, 1.0)


def test_cleanup_removes_exactly_the_negligible_units():
    needed = {3, 7, 11}  # each costs 0.2 when removed; the others cost 0.001

    def loss_without(gone):
        return 0.05 + sum(0.2 if unit in needed else 0.001 for unit in gone)

    kept, removed, unsettled = greedy_cleanup(list(range(16)), loss_without, target=0.1)
    assert kept == [3, 7, 11] and unsettled == 0
    assert removed == [u for u in range(16) if u not in needed]


class FixedLoss:
    """A stand-in MaskedEvaluator whose every loss is `value` (and whose calibration is a marker)."""

    def __init__(self, value: float | None):
        self.value = value

    def fit(self, node_masks, reject_above=None):
        return self.value, "fitted on selection"

    def loss(self, node_masks, calibration, reject_above=None):
        assert self.value is not None, "the check pairs were measured although the selection pairs had failed"
        assert calibration == "fitted on selection"
        return self.value


def test_a_trial_holds_only_where_it_holds_on_the_selection_and_the_check_pairs():
    cfg = PruneConfig()  # search target 0.1275
    assert calibrated_loss(FixedLoss(0.5), {}, cfg, FixedLoss(None)) == 0.5  # failed: the check is not run
    assert calibrated_loss(FixedLoss(0.05), {}, cfg, FixedLoss(0.3)) == 0.3  # held only on the selection pairs
    assert calibrated_loss(FixedLoss(0.05), {}, cfg, FixedLoss(0.01)) == 0.05
    assert calibrated_loss(FixedLoss(0.05), {}, cfg) == 0.05


def test_calibration_recovers_a_scale_and_shift_and_agrees_with_its_logits():
    generator = torch.Generator().manual_seed(0)
    n = 4000
    target = torch.where(torch.arange(n) % 2 == 0, 5, 9)
    alternative = torch.where(target == 5, 9, 5)
    true_margin = 3 * torch.randn(n, generator=generator) + 1.5
    label = torch.rand(n, generator=generator) < torch.sigmoid(true_margin)
    # observed margins are the true ones shrunk by 4 and shifted towards token 9
    sign = torch.where(target == 5, 1.0, -1.0)
    observed = torch.where(label, true_margin, -true_margin) / 4 - 0.5 * sign
    calibration = Calibration.fit(observed, target, alternative)
    assert calibration.scale == pytest.approx(4, rel=0.15)
    assert (calibration.positive, calibration.negative) == (5, 9)
    before = torch.nn.functional.softplus(-observed).mean()
    after = torch.nn.functional.softplus(-calibration.margins(observed, target, alternative)).mean()
    assert after < before
    logits = torch.randn(6, 12, generator=generator)
    rows = torch.arange(6)
    t, a = target[:6], alternative[:6]
    from_logits = calibration.apply(logits)[rows, t] - calibration.apply(logits)[rows, a]
    torch.testing.assert_close(from_logits, calibration.margins(logits[rows, t] - logits[rows, a], t, a))


def test_config_refuses_bad_values_with_the_field_name():
    with pytest.raises(SettingsError, match="ablation='median'"):
        PruneConfig(ablation="median")
    with pytest.raises(SettingsError, match="steps=0"):
        PruneConfig(steps=0)
    with pytest.raises(SettingsError, match="skip_unsolved"):
        PruneConfig(skip_unsolved="maybe")
    assert PruneConfig(lr="1e-3").lr == 1e-3
    with pytest.raises(SettingsError, match="probe_shares"):
        PruneConfig(probe_shares=(0.25, 0.125))  # probes grow
    with pytest.raises(SettingsError, match="probe_shares"):
        PruneConfig(probe_shares=(0.5, 1.0))  # the whole batch is no probe
    assert parse_overrides(PruneConfig, ["probe_shares=[0.0625,0.125,0.25]"]) == {"probe_shares": (0.0625, 0.125, 0.25)}


def test_prune_pairs_are_disjoint_held_out_prompts(tiny_model):
    cfg = PruneConfig(steps=3, pairs_per_step=4, selection_pairs=10, test_pairs=12, check_pairs=6)
    pairs = PrunePairs.from_task(tasks.get("bracket_counting"), tiny_model.tokenizer, cfg)
    batches = (pairs.train, pairs.selection, pairs.test, pairs.check)
    sets = [{p.prompt for p in batch.datapoints} for batch in batches]
    assert [len(s) for s in sets] == [24, 20, 24, 12]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert all(tasks.prompt_split(p) == "test" for s in sets for p in s)  # never in the training corpus
    # Check pairs come last: without them a run trains, chooses and reports on the same pairs.
    unchecked = PrunePairs.from_task(tasks.get("bracket_counting"), tiny_model.tokenizer, replace(cfg, check_pairs=0))
    assert unchecked.check is None
    assert torch.equal(unchecked.test.tokens, pairs.test.tokens)


def test_a_circuit_saved_before_check_pairs_stage_5_or_four_probes_reads_as_without_them(sparse_model):
    circuit = Circuit.load(CIRCUITS_DIR / "sparse" / "single_double_quote")
    circuit.config.pop("check_pairs", None)  # as saved before check pairs existed
    circuit.config.pop("necessity", None)  # and before stage 5
    circuit.config.pop("probe_shares", None)  # and before early rejection's fourth probe
    cfg = PruneConfig.of_circuit(circuit)
    assert cfg.check_pairs == 0  # re-running its method (the controls do) must not add a check it never had
    assert not cfg.necessity and cfg.probe_shares == (0.0625, 0.125, 0.25)
    assert cfg.test_pairs == circuit.config["test_pairs"]
    circuit.config.update(check_pairs=40, necessity=True, probe_shares=[0.25, 0.5])  # a list, as JSON stores it
    cfg = PruneConfig.of_circuit(circuit)
    assert cfg.check_pairs == 40 and cfg.necessity and cfg.probe_shares == (0.25, 0.5)
    batch = tasks.get("single_double_quote").batch(sparse_model.tokenizer, "test", 16, n_ctx=sparse_model.cfg.n_ctx)
    evaluator = cfg.evaluator(sparse_model, trained_masks(sparse_model, circuit), batch)
    assert [sum(len(bucket) for bucket in part) for part in evaluator.parts] == [8, 8, 16]  # pairs 4, 4, 8


def test_prune_leaves_the_model_as_found_and_refuses_foreign_tokens(tiny_model):
    tiny_model.train()
    tiny_model.unembed.W_U.requires_grad_(True)
    tiny_model.blocks[0].mlp.W_in.requires_grad_(False)
    small = dict(steps=2, pairs_per_step=2, selection_pairs=4, test_pairs=4, skip_unsolved=False, cleanup=False)
    text = torch.randint(0, 1024, (4, 64))
    circuit = prune(tiny_model, tasks.get("single_double_quote"), pretraining_tokens=text, progress=False, **small)
    assert (
        tiny_model.training and tiny_model.unembed.W_U.requires_grad and not tiny_model.blocks[0].mlp.W_in.requires_grad
    )
    assert math.isfinite(circuit.task_loss)
    foreign = text.clone()
    foreign[0, 0] = 5000
    with pytest.raises(ValueError, match=r"pretraining_tokens holds token ids .*5000\] but the model's vocabulary"):
        prune(tiny_model, tasks.get("single_double_quote"), pretraining_tokens=foreign, progress=False, **small)


def test_every_pruning_seed_mean_ablates_over_the_models_one_text_sample(sparse_model):
    # Seed 1 draws other pairs and initial scores, but not other text: its constants are the seed-0 sample's.
    text = mean_ablation_tokens(sparse_model)
    assert not torch.equal(text, sample_pretraining_tokens(sparse_model, PRETRAINING_ROWS, seed=1))
    small = dict(steps=1, pairs_per_step=2, selection_pairs=4, test_pairs=4, check_pairs=0, progress=False)
    stages = dict(cleanup=False, necessity=False, edge_cleanup=False)
    circuit = prune(sparse_model, tasks.get("single_double_quote"), seed=1, **small, **stages)
    expected = ablation_values(sparse_model, "mean", text)
    assert circuit.ablation_values.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(circuit.ablation_values[name], value, msg=name)


def test_a_search_for_k_above_give_up_units_ends_the_prune_there(sparse_model):
    # From the shipped scores (no mask training): the search needs dozens of units, so a cap of 5 gives up.
    scores = Circuit.load(CIRCUITS_DIR / "sparse" / "single_double_quote").scores
    small = dict(selection_pairs=48, test_pairs=48, check_pairs=48, cleanup_trials=20, progress=False)
    runs = {
        cap: prune(sparse_model, tasks.get("single_double_quote"), scores=scores, give_up_units=cap, **small)
        for cap in (5, 10_000)
    }
    given_up, finished = runs[5].search, runs[10_000].search
    assert given_up["given_up"] and given_up["units"] > 5 and "given_up" not in finished
    assert given_up["units"] == finished["units"]  # the same search for k; only what follows it differs
    assert runs[5].n_nodes == given_up["nodes"] and not runs[5].removed_edges  # no cleanup, necessity or edges
    assert not {"removed_by_cleanup", "units_added_for_necessity"} & given_up.keys()
    assert {"removed_by_cleanup", "units_added_for_necessity"} <= finished.keys()
    assert runs[10_000].n_nodes < runs[5].n_nodes


def test_tied_qk_masks_keep_or_prune_q_and_k_together(tiny_model, tiny_config):
    means = ablation_values(tiny_model, "zero")
    masks = PruneConfig(tie_qk=True).new_masks(tiny_model, means)
    untied = PruneConfig().new_masks(tiny_model, means)
    per_layer_qk = tiny_config.n_heads * tiny_config.d_head
    assert masks.n_units == untied.n_units - tiny_config.n_layers * per_layer_qk
    for k in (1, 5, 40):
        kept = masks.highest(k)
        for layer in range(tiny_config.n_layers):
            q, key = kept[f"blocks.{layer}.attn.hook_q"], kept[f"blocks.{layer}.attn.hook_k"]
            assert torch.equal(q, key)


def test_loss_vs_nodes_matches_scores_by_name_after_load(tiny_model, tmp_path):
    small = dict(steps=2, pairs_per_step=2, selection_pairs=4, test_pairs=4, skip_unsolved=False, cleanup=False)
    task = tasks.get("single_double_quote")
    circuit = prune(tiny_model, task, ablation="zero", progress=False, **small)
    loaded = Circuit.load(circuit.save(tmp_path / "c"), tiny_model)
    loaded.scores = dict(reversed(list(loaded.scores.items())))  # another key order
    batch = task.batch(tiny_model.tokenizer, "test", 4, n_ctx=64)
    assert loss_vs_nodes(tiny_model, loaded, batch, [0, 7]) == pytest.approx(
        loss_vs_nodes(tiny_model, circuit, batch, [0, 7])
    )


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


@pytest.mark.parametrize("constant_layers", [(), (2, 3)])
def test_last_position_logits_equal_the_full_pass_in_values_and_gradients(sparse_model, constant_layers):
    """One query per prompt in the last attention computed (layer 3, or layer 1 when layers 2 and 3 write
    constants), and every sub-layer after it on the last positions alone: the same logits and gradients."""
    batch = tasks.get("single_double_quote").batch(sparse_model.tokenizer, "test", 6, n_ctx=sparse_model.cfg.n_ctx)
    writes = {f"blocks.{layer}.hook_attn_out": torch.randn(sparse_model.cfg.d_model) for layer in constant_layers}
    q_mask = torch.ones(sparse_model.cfg.n_heads, sparse_model.cfg.d_head, requires_grad=True)
    q_hook = ("blocks.1.attn.hook_q", lambda q, hook: q * q_mask)  # a mask over channels, as pruning's

    def loss_and_grad(narrowed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        q_mask.grad = None
        with constant_writes(sparse_model, writes), sparse_model.hooks(fwd_hooks=[q_hook]):
            if narrowed:
                loss = task_loss(*last_position_logits(sparse_model, batch), reduction="none")
            else:
                loss = task_loss(sparse_model(batch.tokens), batch, reduction="none")
        loss.sum().backward()
        return loss.detach(), q_mask.grad.clone()

    (full, full_grad), (narrowed, narrowed_grad) = loss_and_grad(False), loss_and_grad(True)
    torch.testing.assert_close(narrowed, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(narrowed_grad, full_grad, atol=1e-5, rtol=1e-4)
    assert full_grad.abs().sum() > 0  # layer 1's queries matter in both settings


def test_early_rejection_stops_failing_masks_on_a_probe_and_measures_passing_ones_in_full(sparse_model):
    task = tasks.get("single_double_quote")
    batch = task.batch(sparse_model.tokenizer, "test", 64, seed=3, n_ctx=sparse_model.cfg.n_ctx)
    masks = PruneConfig().new_masks(sparse_model, ablation_values(sparse_model, "zero"))
    evaluator = MaskedEvaluator(sparse_model, masks, batch)  # probes: 4, 8, 16 and 32 of the 64 pairs
    everything, nothing = masks.node_masks(torch.arange(masks.n_units)), masks.node_masks(torch.tensor([]).long())
    full_loss, _ = evaluator.fit(everything)
    assert full_loss < 0.15 and evaluator.passes == 1
    assert evaluator.fit(everything, reject_above=0.15)[0] == full_loss  # passing: the whole batch, same loss
    assert evaluator.passes == 2 and evaluator.rejected == 0
    assert evaluator.fit(nothing, reject_above=0.15)[0] > 0.5  # all ablated: stopped on the first probe
    assert evaluator.passes == 2 + 4 / 64 and evaluator.rejected == 1
    assert evaluator.loss(nothing) == pytest.approx(evaluator.loss(nothing, reject_above=10.0))  # never above 10
    with pytest.raises(ValueError, match="even number"):
        MaskedEvaluator(sparse_model, masks, select_rows(batch, torch.arange(5)))


def test_early_rejection_pairs_the_probe_with_the_last_masks_measured_in_full(tiny_model):
    # Per-prompt losses that vary a lot from prompt to prompt: the probe's own mean (0.10 +- 0.05) cannot tell
    # 0.12 from 0.15, but every prompt costs exactly 0.05 more than under the reference masks, whose whole-batch
    # loss (0.10) is known, so the paired estimate (0.15, no spread) is clearly above 0.12.
    masks = PruneConfig().new_masks(tiny_model, ablation_values(tiny_model, "zero"))
    batch = tasks.get("single_double_quote").batch(tiny_model.tokenizer, "test", 8, n_ctx=64)
    evaluator = MaskedEvaluator(tiny_model, masks, batch)
    reference = torch.tensor([0.01, 0.19] * 8)
    probe = reference[:4] + 0.05
    assert evaluator._estimate_if_clearly_above(probe, 0.12, reference=None) is None
    assert evaluator._estimate_if_clearly_above(probe, 0.12, reference=reference) == pytest.approx(0.15)
    assert evaluator._estimate_if_clearly_above(probe, 0.16, reference=reference) is None
    # The rest of the batch is all that is unknown: a probe of 12 of the 16 prompts whose changes (0 or 0.06,
    # mean 0.03) leave 0.13 +- 0.003 is clearly above 0.11, where 4 prompts with the same changes are not.
    changes = torch.tensor([0.0, 0.06] * 6)
    flat = torch.full((16,), 0.10)
    assert evaluator._estimate_if_clearly_above(flat[:4] + changes[:4], 0.11, reference=flat) is None
    assert evaluator._estimate_if_clearly_above(flat[:12] + changes, 0.11, reference=flat) == pytest.approx(0.13)
    # A probe of easy prompts: its own mean (0.06) is under the threshold, the paired estimate (0.28) is not, and
    # a stopped call must report the estimate, or its caller would take the trial for a success.
    reference = torch.tensor([0.01] * 4 + [0.3] * 12)
    assert evaluator._estimate_if_clearly_above(reference[:4] + 0.05, 0.2, reference) == pytest.approx(0.2775)
    # The same through a real call: the reference agrees with the masks on the first probe and is 10 elsewhere.
    everything = masks.node_masks(torch.arange(masks.n_units))
    probe = torch.nn.functional.softplus(-evaluator.margins(everything, parts=slice(0, 1)))
    evaluator.references["loss"] = torch.cat([probe, torch.full((len(batch) - len(probe),), 10.0)])
    evaluator.reference_masks["loss"] = evaluator._applied(everything, invert=False)
    threshold = probe.mean().item() + 1.0
    stopped = evaluator.loss(everything, reject_above=threshold)
    assert evaluator.rejected == 1 and stopped == pytest.approx(evaluator.references["loss"].mean().item())
    assert stopped > threshold


def test_an_audit_measures_a_stopped_trial_in_full_without_counting_the_pass(tiny_model):
    masks = PruneConfig().new_masks(tiny_model, ablation_values(tiny_model, "zero"))
    batch = tasks.get("single_double_quote").batch(tiny_model.tokenizer, "test", 8, n_ctx=64)
    evaluator = MaskedEvaluator(tiny_model, masks, batch)
    evaluator.audit = True
    everything = masks.node_masks(torch.arange(masks.n_units))
    full_loss = evaluator.loss(everything)
    probe = torch.nn.functional.softplus(-evaluator.margins(everything, parts=slice(0, 1)))
    # A reference far worse off the probe makes the paired estimate wrong: a false rejection, which the audit sees.
    evaluator.references["loss"] = torch.cat([probe, torch.full((len(batch) - len(probe),), 10.0)])
    evaluator.reference_masks["loss"] = evaluator._applied(everything, invert=False)
    passes = evaluator.passes
    evaluator.loss(everything, reject_above=full_loss + 0.5)
    assert evaluator.passes == pytest.approx(passes + len(probe) / len(batch))
    (audit,) = evaluator.audits
    assert audit["loss"] == pytest.approx(full_loss) and audit["loss"] < audit["threshold"] < audit["estimate"]


def test_early_rejection_judges_masks_far_from_its_reference_on_the_probe_alone(tiny_model):
    masks = PruneConfig().new_masks(tiny_model, ablation_values(tiny_model, "zero"))
    batch = tasks.get("single_double_quote").batch(tiny_model.tokenizer, "test", 8, n_ctx=64)
    evaluator = MaskedEvaluator(tiny_model, masks, batch, pair_within=16)
    everything = masks.node_masks(torch.arange(masks.n_units))
    full_loss = evaluator.loss(everything)
    probe = torch.nn.functional.softplus(-evaluator.margins(everything, parts=slice(0, 1)))
    # The misleading reference of the test above, but for masks 16 nodes away: no pairing, so no false rejection.
    evaluator.references["loss"] = torch.cat([probe, torch.full((len(batch) - len(probe),), 10.0)])
    evaluator.reference_masks["loss"] = evaluator._applied(everything, invert=False)
    evaluator.reference_masks["loss"][:16] = 0
    assert evaluator.loss(everything, reject_above=full_loss + 0.5) == pytest.approx(full_loss)
    assert evaluator.rejected == 0
    # Judged unpaired, the spread is at least the reference's: a probe with no spread of its own is not enough.
    flat = torch.full((4,), 0.3)
    assert evaluator._estimate_if_clearly_above(flat, 0.2, reference=None) == pytest.approx(0.3)
    assert evaluator._estimate_if_clearly_above(flat, 0.2, torch.tensor([0.0, 1.0] * 8), paired=False) is None


def test_sub_layers_a_trial_ablates_whole_are_skipped_with_the_same_losses(tiny_model, monkeypatch):
    means = ablation_values(tiny_model, "mean", pretraining_tokens=torch.randint(1, 1024, (4, 16)))
    masks = PruneConfig().new_masks(tiny_model, means)
    batch = tasks.get("single_double_quote").batch(tiny_model.tokenizer, "test", 8, n_ctx=64)
    evaluator = MaskedEvaluator(tiny_model, masks, batch)
    node_masks = masks.node_masks(torch.arange(0, masks.n_units, 3))
    node_masks["blocks.1.hook_attn_out"].zero_()
    node_masks["blocks.0.hook_mlp_out"].zero_()
    skipped_writes = []

    def recording(model, writes):
        skipped_writes.append(set(writes))
        return constant_writes(model, writes)

    monkeypatch.setattr(importlib.import_module("circuitlab.masks"), "constant_writes", recording)
    skipped = evaluator.margins(node_masks)
    assert skipped_writes == [{"blocks.1.hook_attn_out", "blocks.0.hook_mlp_out"}]
    hooks = [
        (name, lambda activation, hook, name=name: keep_or_ablate(activation, node_masks[name], means[name]))
        for name in masks.names
    ]
    computed = []
    with torch.no_grad(), tiny_model.hooks(fwd_hooks=hooks):
        for bucket in (bucket for part in evaluator.parts for bucket in part):
            logits, _ = last_position_logits(tiny_model, bucket)
            rows = torch.arange(len(bucket))
            computed.append(logits[rows, 0, bucket.target] - logits[rows, 0, bucket.alternative])
    # The same up to float rounding: with layer 1's attention skipped, the one-query attention of
    # `last_position_logits` moves from layer 1 to layer 0, which then runs unfused.
    torch.testing.assert_close(skipped, torch.cat(computed), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_prune_finds_a_small_sufficient_and_necessary_circuit(sparse_model):
    task = tasks.get("single_double_quote")
    # Every stage, each smaller than by default for CI time: most of a prune is passes over the selection and
    # check pairs, one per cleanup trial (defaults: 400 pairs, 200 trials per cleanup; here 2 min on one thread).
    small = dict(steps=60, selection_pairs=150, check_pairs=150, cleanup_trials=10)
    circuit = prune(sparse_model, task, progress=False, **small)
    total = sum(torch.Size(shape).numel() for shape in node_shapes(sparse_model).values())
    assert circuit.task_loss <= 0.15 < circuit.ablated_model_loss  # on test pairs the search never saw
    assert circuit.n_nodes < 0.02 * total
    assert circuit.search["removed_by_cleanup"] > 0 and circuit.search["passes"] < 60
    assert not any(silent.any() for silent in silent_nodes(circuit.masks).values())  # none that cannot matter
    # Ablating just the circuit takes away most of what the model knows: 0.90 here, chance 0.69.
    assert circuit.necessity_loss > 0.5 > 3 * circuit.full_model_loss
    fresh = task.batch(sparse_model.tokenizer, "test", 300, seed=11, n_ctx=sparse_model.cfg.n_ctx)
    assert circuit.loss(sparse_model, fresh) <= 0.15 * 1.25  # and on pairs nobody saw
    standalone = circuit.to_model(sparse_model)
    torch.testing.assert_close(
        task_loss(standalone(fresh.tokens), fresh).item(), circuit.loss(sparse_model, fresh), rtol=1e-4, atol=1e-5
    )


def test_cleanup_stops_after_its_trial_budget():
    calls = []

    def loss_without(gone):
        calls.append(gone)
        return 1.0  # nothing can go

    kept, removed, unsettled = greedy_cleanup(list(range(100)), loss_without, target=0.1, max_trials=7)
    assert len(calls) == 7 and kept == list(range(100)) and removed == []
    # blocks of 6: the first block failed and was split until 0, 1 and 2 had failed alone; the rest is queued
    assert unsettled == 97


def test_a_target_the_ablated_model_meets_gives_an_empty_circuit(tiny_model):
    # A target every loss meets: the search keeps nothing, and the stages after it must cope (the dense model
    # does else_elif from its bigram table alone).
    small = dict(steps=2, pairs_per_step=2, selection_pairs=4, test_pairs=4, skip_unsolved=False)
    circuit = prune(tiny_model, tasks.get("else_elif"), ablation="zero", target_loss=5.0, progress=False, **small)
    assert circuit.n_nodes == 0 and circuit.n_edges == 0 and circuit.search["units"] == 0


def test_a_circuit_that_misses_on_the_check_pairs_grows_until_it_holds_there(tiny_model):
    # Every pair has the same answer, so the calibration's shift alone reaches the target with no node kept
    # (the search stops at k = 0). Check pairs that agree leave the circuit empty; the same prompts with the
    # answers swapped, which no calibrated circuit gets right, make the check add units until none is left.
    drawn = tasks.get("single_double_quote").batch(tiny_model.tokenizer, "test", 16, seed=0, n_ctx=64)
    same = replace(drawn, target=torch.full_like(drawn.target, 5), alternative=torch.full_like(drawn.target, 6))
    swapped = replace(same, target=same.alternative, alternative=same.target)
    small = dict(steps=2, pairs_per_step=2, skip_unsolved=False, ablation="zero", edge_cleanup=False, progress=False)
    agreed = prune(tiny_model, pairs=PrunePairs(same, same, same, check=same), **small)
    assert agreed.search["units"] == 0 and agreed.search["units_added_by_check"] == 0 and agreed.n_nodes == 0
    refused = prune(tiny_model, pairs=PrunePairs(same, same, same, check=swapped), **small)
    total = sum(torch.Size(shape).numel() for shape in node_shapes(tiny_model).values())
    assert refused.search["units"] == 0 and refused.n_nodes == total


def test_units_added_for_the_check_pairs_are_cleaned_up_on_both_pair_sets(tiny_model, monkeypatch):
    # Units ranked 0, 1, 2, ...: the selection pairs need units 0 and 1, the check pairs also unit 7. The search
    # keeps 0-1, the check adds the ranking's next units up to 7, and the cleanup removes those neither needs.
    masks = PruneConfig().new_masks(tiny_model, ablation_values(tiny_model, "zero"))
    with torch.no_grad():
        for score in masks.scores:
            score.zero_()
    masks.tiebreak = -torch.arange(masks.n_units, dtype=torch.float)  # ties broken: unit 0 first
    selection, check = object(), object()

    def fake_loss(_selection, node_masks, cfg, on_check=None):
        flat = torch.cat([node_masks[name].flatten() for name in masks.names])
        kept = set(masks.unit_of[flat > 0].tolist())
        needed = {0, 1} if on_check is None else {0, 1, 7}
        return 0.05 if needed <= kept else 1.0

    pruner = importlib.import_module("circuitlab.prune")
    monkeypatch.setattr(pruner, "calibrated_loss", fake_loss)
    monkeypatch.setattr(pruner, "without_silent", lambda masks, units: units)  # the fake loss has no sub-layers
    units, found = search_units(masks, selection, PruneConfig(), check)
    assert found["units"] == 2 and found["units_added_by_check"] == 6 and found["removed_by_cleanup"] == 5
    assert units == [0, 1, 7]
