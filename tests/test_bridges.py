"""Bridges between a dense and a sparse model, their training through the trainer, and steering through them."""

from __future__ import annotations

import dataclasses
import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from torch import nn

from circuitlab.bridges import (
    CONFIG_FILE,
    REPORT_FILE,
    BridgeConfig,
    BridgedPair,
    BridgeObjective,
    Bridges,
    bridge_report,
    hybrid_logits,
    load_bridged_pair,
)
from circuitlab.checkpoint import CheckpointError
from circuitlab.circuit import Circuit, Node
from circuitlab.config import SparseTransformerConfig
from circuitlab.make_bridges import main as make_bridges_main
from circuitlab.make_steering import SPREAD_FILE, make_steering
from circuitlab.model import SparseTransformer
from circuitlab.paths import DATA_DIR
from circuitlab.plotting import plot_bridge_report, plot_channel_ranking, plot_steering_curve
from circuitlab.settings import SettingsError
from circuitlab.sparsity import l0_schedule
from circuitlab.steering import (
    CHANNELS_FILE,
    channel_ranking,
    channel_spread,
    load_steering,
    ratios_over_draws,
    residual_site,
    save_steering,
    steered_rank,
    steering_curve,
    steering_effect,
)
from circuitlab.tasks import TaskBatch
from circuitlab.train import TrainConfig, initial_model, parameter_groups, training_step


@pytest.fixture
def tiny_pair(tiny_config: SparseTransformerConfig) -> BridgedPair:
    dense = SparseTransformer(SparseTransformerConfig.dense_twin(tiny_config, d_model=48, seed=4)).eval()
    sparse = SparseTransformer(tiny_config).eval()
    return BridgedPair(dense, sparse, Bridges.between(dense, sparse))


def tokens(n: int = 4, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 1024, (n, length), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_the_encoders_abstopk(tiny_pair):
    bridges = tiny_pair.bridges
    assert bridges.sites == tiny_pair.sparse.residual_sites and len(bridges.sites) == 2 * 2 + 1
    encoded = bridges.encode(2, torch.randn(3, 5, 48))
    assert encoded.shape == (3, 5, 32)
    assert ((encoded != 0).sum(-1) == bridges.topk.k).all() and bridges.topk.k == 8  # afrac 1/4 of 32
    assert bridges.decode("blocks.1.hook_resid_mid", encoded).shape == (3, 5, 48)
    assert bridges.decoder_matrix(0).shape == (48, 32)


def test_a_hybrid_pass_through_identity_bridges_is_the_plain_model(tiny_config):
    model = SparseTransformer(dataclasses.replace(tiny_config, afrac=None)).eval()
    bridges = Bridges(model.residual_sites, 32, 32, afrac=None)
    with torch.no_grad():
        for linear in [*bridges.encoders, *bridges.decoders]:
            linear.weight.copy_(torch.eye(32))
            linear.bias.zero_()
    pair, batch = BridgedPair(model, model, bridges), tokens()
    expected = model(batch)
    for site in range(len(bridges.sites)):
        for start in ("dense", "sparse"):
            torch.testing.assert_close(hybrid_logits(pair, batch, site, start), expected)
    report = bridge_report(pair, batch)
    assert (report[["nmse_encoder", "nmse_decoder"]].abs() < 1e-6).all().all()
    assert (report[["kl_dense_then_sparse", "kl_sparse_then_dense"]].abs() < 1e-5).all().all()


def test_training_lowers_every_bridge_term(tiny_pair):
    with torch.no_grad():  # a dense model with confident outputs, so the sparse one starts far from it in KL
        tiny_pair.dense.unembed.W_U.mul_(100)
    objective = BridgeObjective(tiny_pair.dense, tiny_pair.bridges, BridgeConfig(lr_scale=1.0))
    sparse = tiny_pair.sparse.train()
    optimizer = torch.optim.Adam(parameter_groups(sparse, objective), betas=(0.9, 0.95), eps=0.1)
    batch, first = tokens(8, 32), None
    for _ in range(15):
        training_step(sparse, optimizer, batch, lr=3e-3, l0=1.0, l0_embed=1.0, weight_decay=0.0, objective=objective)
        first = first or dict(objective.last_terms)
    last = {name: value.item() for name, value in objective.terms(sparse, batch).items()}
    assert all(last[name] < first[name] for name in first), (first, last)
    assert all(p.grad is None for p in tiny_pair.dense.parameters())  # the dense model stays frozen


def test_save_load_round_trip_and_refusals(tiny_pair, tmp_path):
    dense_dir, run = tmp_path / "dense", tmp_path / "run"
    tiny_pair.dense.save_pretrained(dense_dir)
    tiny_pair.sparse.save_pretrained(run)
    tiny_pair.bridges.save(run, dense_dir=dense_dir, sparse_dir=run)
    loaded = load_bridged_pair(run)
    for name, tensor in tiny_pair.bridges.state_dict().items():
        assert torch.equal(loaded.bridges.state_dict()[name], tensor)
    batch = tokens()
    torch.testing.assert_close(hybrid_logits(loaded, batch, 3, "sparse"), hybrid_logits(tiny_pair, batch, 3, "sparse"))

    other = SparseTransformer(dataclasses.replace(tiny_pair.dense.cfg, seed=9))
    other.save_pretrained(dense_dir, overwrite=True)
    with pytest.raises(CheckpointError, match=r"dense.model\.safetensors is not the dense model these bridges"):
        load_bridged_pair(run)
    info = json.loads((run / CONFIG_FILE).read_text())
    (run / CONFIG_FILE).write_text(json.dumps({**info, "d_sparse": 64}))
    with pytest.raises(CheckpointError, match=r"bridges.json does not belong to .*bridges.safetensors.*d_sparse"):
        Bridges.load(run)
    (run / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="bridges.json is missing"):
        Bridges.load(run)


def test_bad_inputs_name_the_field(tiny_pair, tiny_config):
    with pytest.raises(SettingsError, match=r"hybrid_sites=0 must be at least 1"):
        BridgeConfig(hybrid_sites=0)
    with pytest.raises(SettingsError, match=r"lr_scale=0.0 must be greater than 0"):
        BridgeConfig(lr_scale=0)
    with pytest.raises(ValueError, match="start='both'"):
        hybrid_logits(tiny_pair, tokens(), 0, "both")
    with pytest.raises(ValueError, match=r"site=9 is not a bridged site"):
        tiny_pair.bridges.encode(9, torch.randn(1, 48))
    with pytest.raises(ValueError, match="same depth"):
        Bridges.between(SparseTransformer(dataclasses.replace(tiny_config, n_layers=3)), tiny_pair.sparse)
    with pytest.raises(ValueError, match=r"node L0.q.3 is at 'q', not a residual channel"):
        residual_site(tiny_pair.sparse, Node(0, "q", 3))
    assert residual_site(tiny_pair.sparse, Node(1, "mlp_write", 0)) == "blocks.1.hook_resid_post"
    assert residual_site(tiny_pair.sparse, Node(1, "attn_read", 0)) == "blocks.0.hook_resid_post"


def test_steering_at_strength_zero_changes_nothing(tiny_pair):
    batch = tokens(6, 12)
    pairs = TaskBatch(batch, torch.full((6,), 11), torch.tensor([5, 6] * 3), torch.tensor([6, 5] * 3))
    node = Node(1, "mlp_read", 4)
    mask = torch.zeros(32, dtype=torch.bool)
    mask[4] = True
    circuit = Circuit("toy", {"blocks.1.hook_mlp_read": mask}, {}, "mean", 0.15, 0.0, 0.0, 0.0)
    curve = steering_curve(tiny_pair, node, circuit, pairs, strengths=(0.0, 1.0), n_random=3)
    plain = tiny_pair.dense(batch[1::2])[:, -1].softmax(-1)[:, 5].mean().item()
    assert curve.loc[0.0, "dense"] == pytest.approx(plain, rel=1e-5)
    assert curve.loc[0.0, "random"] == pytest.approx(plain, rel=1e-5)
    assert 4 not in curve.attrs["random_channels"] and curve.attrs["prompts"] == 3
    assert len(curve.attrs["random_channels"]) == 3
    assert set(steering_effect(curve)) == {"dense", "random", "sparse", "ratio_to_random"}
    every = steering_curve(tiny_pair, node, circuit, pairs, strengths=(0.0, 1.0))  # the control over all of them
    assert every.attrs["random_channels"] == [c for c in range(32) if c != 4]
    ranking = channel_ranking(tiny_pair, node, circuit, pairs)
    assert sorted(ranking.index) == list(range(32)) and ranking.steered.sum() == 1 and ranking.in_circuit.sum() == 1
    assert ranking.loc[4, "dense_change"] == pytest.approx(every.loc[1.0, "dense"] - plain, abs=1e-6)
    others = ranking.drop(index=4).dense_change
    assert others.mean() == pytest.approx(every.loc[1.0, "random"] - plain, abs=1e-6)  # the control's mean
    assert ranking.dense_change.is_monotonic_decreasing


def test_l0_without_anneal_and_init_from(tiny_config, tmp_path):
    assert l0_schedule(0, 100, 0.1, start_frac=0.0, end_frac=0.0) == 0.1
    source = SparseTransformer(tiny_config)
    with torch.no_grad():
        source.unembed.b_U.fill_(0.5)
    source.save_pretrained(tmp_path / "start")
    started = initial_model(tiny_config, TrainConfig(init_from=str(tmp_path / "start")))
    assert torch.equal(started.unembed.b_U, source.unembed.b_U)
    with pytest.raises(SettingsError, match=r"train.init_from=.* has another model config \(d_model=32 where"):
        initial_model(dataclasses.replace(tiny_config, d_model=64), TrainConfig(init_from=str(tmp_path / "start")))


def test_the_command_trains_saves_reports_and_resumes(tiny_config, tmp_path):
    dense_cfg = SparseTransformerConfig.dense_twin(tiny_config, n_ctx=32)
    SparseTransformer(dense_cfg).save_pretrained(tmp_path / "dense")
    config = tmp_path / "bridges.yaml"
    model = {k: v for k, v in dataclasses.asdict(tiny_config).items() if k not in ("tokenizer_path", "format_version")}
    config.write_text(
        json.dumps(
            {
                "model": {**model, "n_ctx": 32},
                "train": {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "eval_batches": 1, "threads": 1},
                "bridges": {"dense": str(tmp_path / "dense"), "hybrid_sites": 1, "fit_batches": 1},
            }
        )
    )
    run = tmp_path / "run"
    make_bridges_main(["--config", str(config), "--out", str(run), "--no-progress"])
    pair = load_bridged_pair(run)
    assert len(pair.bridges.sites) == 5 and (run / "bridge_report.csv").is_file()
    assert (run / "checkpoints" / "step-0000004" / "companion.safetensors").is_file()
    before = {name: tensor.clone() for name, tensor in pair.bridges.state_dict().items()}
    make_bridges_main(["--config", str(config), "--out", str(run), "--resume", "--no-progress"])
    after = Bridges.load(run).state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())  # resumed: nothing retrained
    with pytest.raises(SystemExit, match=r"make_bridges: error: .*, bridges --set bridges.hybrid_sites=0: .*hybrid"):
        make_bridges_main(["--config", str(config), "--out", str(tmp_path / "x"), "--set", "bridges.hybrid_sites=0"])


def test_an_objective_keeps_the_model_first_in_adam(tiny_pair):
    objective = BridgeObjective(tiny_pair.dense, tiny_pair.bridges, BridgeConfig(lr_scale=0.1))
    groups = parameter_groups(tiny_pair.sparse, objective)
    assert [group["lr_scale"] for group in groups] == [1.0, 0.1]
    assert all(isinstance(p, nn.Parameter) for p in groups[1]["params"])


def test_the_shipped_pair_loads_and_its_hybrid_passes_stay_close_to_the_dense_model():
    pair = load_bridged_pair(DATA_DIR / "bridges")  # the hashes in bridges.json match both shipped checkpoints
    assert pair.dense.cfg.afrac is None and pair.sparse.cfg.weight_l0 < 1
    report = pd.read_csv(DATA_DIR / "bridges" / REPORT_FILE, index_col="site")
    assert list(report.index) == pair.bridges.sites
    assert (report[["kl_dense_then_sparse", "kl_sparse_then_dense"]] < 0.5).all().all()
    assert (report[["nmse_encoder", "nmse_decoder"]] < 0.5).all().all()


def test_the_plots_draw_every_site_and_every_curve():
    report = pd.read_csv(DATA_DIR / "bridges" / REPORT_FILE, index_col="site")
    fig = plot_bridge_report(report)
    assert [len(ax.patches) for ax in fig.axes] == [2 * len(report)] * 2
    curve = pd.DataFrame({"dense": [0.01, 0.1], "random": [0.01, 0.02], "sparse": [0.02, 0.5]}, index=[0.0, 1.0])
    ax = plot_steering_curve(curve, "'")
    assert [line.get_label() for line in ax.lines][:3] == [
        "dense, steered through the bridge",
        "dense, random channel",
        "sparse model, same edit",
    ]
    plt.close("all")


def test_a_drawn_control_ratio_varies_with_the_draw_and_the_plot_marks_every_channel():
    channels = pd.DataFrame(
        {
            "dense_change": [0.4, 0.3, 0.2, 0.1, -0.1, 0.05],
            "in_circuit": [True, True, False, False, False, False],
            "steered": [True, False, False, False, False, False],
        },
        index=pd.Index([7, 3, 1, 2, 4, 5], name="channel"),
    )
    ratios = ratios_over_draws(channels, size=1, draws=200)
    assert set(ratios.round(6)) == {2.0, 4.0, -4.0, 8.0}  # 0.4 over each outside channel's change alone
    assert ratios_over_draws(channels, size=4, draws=5).round(6).eq(round(0.4 / 0.0625, 6)).all()  # all four
    assert steered_rank(channels) == 1 and steered_rank(channels.assign(steered=channels.index == 4)) == 5
    ax = plot_channel_ranking(channels, "'")
    assert len(ax.patches) == len(channels)
    assert ax.lines[0].get_ydata()[0] == pytest.approx(0.0625)  # the control: the outside channels' mean
    plt.close("all")


def test_channel_spread_shares_grow_with_the_channels_counted(tiny_pair):
    batch = tokens(6, 12)
    pairs = TaskBatch(batch, torch.full((6,), 11), torch.tensor([5, 6] * 3), torch.tensor([6, 5] * 3))
    spread = channel_spread(tiny_pair.sparse, pairs, top=(1, 4, 32))
    assert list(spread.index) == tiny_pair.sparse.residual_sites
    assert ((spread.top_1_share > 0) & (spread.top_1_share <= spread.top_4_share)).all()
    assert spread.top_32_share.round(5).eq(1).all()  # all 32 channels of the toy model hold all of the change
    assert spread.channels_separated.between(0, 32).all()


def test_steering_results_round_trip_and_a_missing_one_names_the_command(tmp_path):
    effects = pd.DataFrame({"site": ["s"], "separation": [0.5], "patch_effect": [0.1]}, index=pd.Index(["L0.q.1"]))
    effects.index.name = "node"
    curve = pd.DataFrame({"dense": [0.1, 0.2], "random": [0.1, 0.1], "sparse": [0.1, 0.4]}, index=[0.0, 1.0])
    curve.index.name = "strength"
    curve.attrs.update(node="L0.q.1", random_channels=[3, 4])
    save_steering(tmp_path / "task", effects, curve)
    loaded_effects, loaded_curve = load_steering(tmp_path / "task")
    pd.testing.assert_frame_equal(loaded_effects, effects)
    pd.testing.assert_frame_equal(loaded_curve, curve)
    assert loaded_curve.attrs == curve.attrs
    with pytest.raises(FileNotFoundError, match=r"lacks nodes.csv, curve.csv, curve.json.*circuitlab.make_steering"):
        load_steering(tmp_path / "other")


def test_the_shipped_steering_is_complete_and_chose_its_first_ranked_node(tmp_path):
    assert make_steering(DATA_DIR / "bridges", DATA_DIR / "circuits" / "bridged", DATA_DIR / "steering") == []
    for task in ("single_double_quote", "while_return_true"):
        nodes, curve = load_steering(DATA_DIR / "steering" / task)
        assert curve.attrs["node"] == nodes.index[0] and curve.attrs["prompts"] > 100
        assert steering_effect(curve)["dense"] > 0  # the steered node moves the dense model toward the target
        spread = pd.read_csv(DATA_DIR / "steering" / task / SPREAD_FILE, index_col="site")
        channels = pd.read_csv(DATA_DIR / "steering" / task / CHANNELS_FILE, index_col="channel")
        assert channels.loc[channels.steered].index.tolist() == [Node.parse(curve.attrs["node"]).index]
        assert (spread.top_1_share <= spread.top_16_share).all()
    with pytest.raises(FileNotFoundError, match="holds no circuit folder"):
        make_steering(DATA_DIR / "bridges", tmp_path, tmp_path / "out")
