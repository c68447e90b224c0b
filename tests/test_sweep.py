"""The frontier sweep: the grid it expands to, bad configs refused before anything trains, the tables a tiny sweep
writes, reruns that skip what is done and resume what is not, and two workers that write what one does."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from circuitlab import sweep, tables, tasks
from circuitlab.frontier import grid_budget
from circuitlab.sweep import CIRCUIT_COLUMNS, MODEL_COLUMNS, NOISE_COLUMNS, TABLES, load_sweep, main
from circuitlab.train import TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[1]
FRONTIER = ROOT / "configs" / "frontier.yaml"
SMOKE = ROOT / "configs" / "frontier_smoke.yaml"
SMOKE_MODELS = ["w16_nz4k", "w16_dense", "w32_nz4k", "w32_dense"]
TIMINGS = ("seconds", "train_seconds", "prune_seconds")


def sweep_command(config: Path, folder: Path, *extra: str, runs: Path | None = None) -> str:
    """Run the sweep with its tables in folder/out and its models in `runs` (folder/runs); returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main([str(config), "--out", str(folder / "out"), "--set", f"train.out_dir={runs or folder / 'runs'}", *extra])
    return printed.getvalue()


def printed_rows(printed: str) -> list[dict]:
    return [json.loads(line) for line in printed.splitlines() if line.startswith("{")]


def results(out: Path) -> dict[str, set[tuple]]:
    """Each table's rows without their timings, as a set."""
    return {
        name: {tuple(v for k, v in row.items() if k not in TIMINGS) for row in tables.read_rows(out / name)}
        for name in TABLES
    }


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("sweep")
    return folder, sweep_command(SMOKE, folder)


def test_the_frontier_grid_expands_to_its_models_and_budgets():
    frontier = load_sweep(FRONTIER)
    widths, budgets = (64, 128, 256), {"nz30k": 30_000, "nz60k": 60_000, "nz90k": 90_000}
    assert [plan.name for plan in frontier.models] == [
        f"w{width}_{kind}" for width in widths for kind in [*budgets, "dense"]
    ]
    for plan in frontier.models:
        hidden = 2 * 12 * plan.width**2  # two layers of q, k, v, o (d_model^2 each) and an MLP of 4 x d_model
        assert (plan.model.d_model, plan.model.n_heads, plan.model.n_layers) == (plan.width, plan.width // 16, 2)
        assert plan.train.out_dir == str(Path("runs/frontier") / plan.name) and plan.train.resume
        kind = plan.name.split("_")[1]
        if kind == "dense":
            assert (plan.model.weight_l0, plan.model.embed_l0, plan.model.afrac, plan.train.lr) == (1, 1, None, 0.01)
        else:
            assert plan.model.weight_l0 == pytest.approx(budgets[kind] / hidden)
            assert grid_budget(plan.name) == budgets[kind]  # chapter 08 reads the budget back from the name
            assert (plan.model.embed_l0, plan.model.afrac, plan.train.lr) == (0.25, 0.25, 0.02)
    assert frontier.tasks == list(tasks.PAPER_TASKS)
    assert frontier.noise is not None and frontier.noise.model in [plan.name for plan in frontier.models]
    assert load_sweep(SMOKE, out="elsewhere").out == Path("elsewhere")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grid": {"widths": [16], "nonzero": [10_000]}}, "grid.nonzero: 10,000 is above the 6,144 hidden weights"),
        ({"grid": {"widths": [32], "nonzero": [1000]}}, "grid.nonzero: 1,000 is below the 3,072 hidden weights"),
        ({"grid": {"widths": [24], "nonzero": [4000]}}, "grid.widths: 24 is not a multiple of model.d_head=16"),
        ({"grid": {"widths": [16], "nonzer": [4000]}}, "unknown Grid field(s) ['nonzer']"),
        ({"grid": {"widths": [16], "nonzero": 4000}}, "grid: Invalid Grid: nonzero=4000 is not a list"),
        ({"prune": {"stepz": 3}}, "prune: unknown PruneConfig field(s) ['stepz']. Valid fields: target_loss"),
        ({"sweep": {"steps": 3}}, "unknown section(s) ['sweep']"),
        ({"model": {"n_layers": 2, "d_model": 64}}, "['d_model'] are set by the grid"),
        ({"tasks": ["if_equals", "nosuch"]}, "tasks: no task named ['nosuch']"),
        ({"noise": {"model": "w99_nz4k"}}, "noise: model='w99_nz4k' is not in the grid"),
    ],
)
def test_bad_configs_are_refused_by_name_before_anything_trains(tmp_path, changes, message):
    config = yaml.safe_load(SMOKE.read_text()) | changes
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exited:
        sweep_command(path, tmp_path)
    assert str(exited.value.code).startswith(f"circuitlab.sweep: error: {path}") and message in str(exited.value.code)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_an_unknown_model_and_a_table_of_other_columns_are_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"--only: no model named \['w17_dense'\]"):
        sweep_command(SMOKE, tmp_path, "--only", "w16_nz4k", "w17_dense")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "models.csv").write_text("name,loss\n")
    with pytest.raises(SystemExit, match=r"models.csv has the columns \['name', 'loss'\]"):
        sweep_command(SMOKE, tmp_path)
    assert not (tmp_path / "runs").exists()


def test_a_tiny_sweep_writes_every_table(smoke_sweep):
    folder, printed = smoke_sweep
    out = folder / "out"
    for name, columns in TABLES.items():
        assert tuple(tables.read_rows(out / name)[0]) == columns
    models = tables.read_rows(out / "models.csv")
    circuits = tables.read_rows(out / "circuits.csv")
    assert [row["model"] for row in models] == SMOKE_MODELS
    assert [(row["model"], row["task"]) for row in circuits] == [
        (model, task) for model in SMOKE_MODELS for task in ("if_equals", "single_double_quote")
    ]
    noise = tables.read_rows(out / "noise.csv")
    assert [(row["model"], row["seed"]) for row in noise] == [("w32_nz4k", "0")] * 2 + [("w32_nz4k", "1")] * 2
    for row in circuits + noise:
        solved = float(row["full_model_loss"]) <= 0.75  # the smoke config's target
        assert row["solved"] == str(solved) and (row["edges"] != "") == solved
    for row in models:
        mine = [r for r in circuits if r["model"] == row["model"]]
        assert int(row["tasks_solved"]) == sum(r["solved"] == "True" for r in mine)
        assert int(row["tokens"]) == 6 * 4 * 64 and float(row["val_loss"]) > 0
        assert int(row["nonzero_hidden"]) <= int(row["nonzero_params"]) <= int(row["total_params"])
        assert (folder / "runs" / row["model"] / "model.safetensors").is_file()
    hidden = {row["model"]: int(row["nonzero_hidden"]) for row in models}
    assert 4000 <= hidden["w16_nz4k"] < 4200 and hidden["w16_dense"] == 6144  # the budget, and a few the floor adds
    assert "w32_nz4k: training 6 steps" in printed


def test_a_rerun_skips_every_model_whose_rows_are_written(smoke_sweep):
    folder, _ = smoke_sweep
    before = {name: (folder / "out" / name).read_bytes() for name in TABLES}
    printed = sweep_command(SMOKE, folder)
    assert printed.splitlines() == [f"{name}: every row is in {folder / 'out'}, skipped" for name in SMOKE_MODELS]
    assert {name: (folder / "out" / name).read_bytes() for name in TABLES} == before


def test_an_interrupted_sweep_resumes_where_it_stopped(smoke_sweep, tmp_path):
    folder, _ = smoke_sweep
    done = folder / "out"
    interrupted = tmp_path / "out"
    interrupted.mkdir()
    kept = {"circuits.csv": 3, "models.csv": 1, "noise.csv": 0}  # rows written before the interruption
    for name, rows in kept.items():
        lines = (done / name).read_text().splitlines(keepends=True)
        (interrupted / name).write_text("".join(lines[: 1 + rows]))
    printed = sweep_command(SMOKE, tmp_path, runs=folder / "runs")
    assert results(interrupted) == results(done)
    assert printed.count("from step 6") == 3  # w16_nz4k is skipped; the other models are loaded, not trained again
    computed = {(row["model"], row["task"]) for row in printed_rows(printed) if "nodes" in row and "seed" not in row}
    assert computed == {(m, t) for m in SMOKE_MODELS[1:] for t in ("if_equals", "single_double_quote")} - {
        ("w16_dense", "if_equals")
    }
    circuits = (interrupted / "circuits.csv").read_text().splitlines()
    assert circuits[:4] == (done / "circuits.csv").read_text().splitlines()[:4]  # appended, never rewritten


def test_a_model_that_fails_leaves_the_others_to_run(tmp_path, monkeypatch):
    def diverge_on_w16_nz4k(model_cfg, cfg, progress):
        if cfg.out_dir.endswith("w16_nz4k"):
            raise TrainingDiverged("Training diverged at step 3")
        return train(model_cfg, cfg, progress)

    monkeypatch.setattr(sweep, "train", diverge_on_w16_nz4k)
    with pytest.raises(SystemExit, match="failed.*\nw16_nz4k: TrainingDiverged: Training diverged at step 3$"):
        sweep_command(SMOKE, tmp_path, "--only", "w16_nz4k", "w16_dense")
    assert [row["model"] for row in tables.read_rows(tmp_path / "out" / "models.csv")] == ["w16_dense"]


@pytest.mark.slow
def test_two_workers_write_the_rows_one_worker_does(smoke_sweep, tmp_path):
    folder, _ = smoke_sweep
    sweep_command(SMOKE, tmp_path, "--workers", "2")
    assert results(tmp_path / "out") == results(folder / "out")
    for name, columns in (
        ("circuits.csv", CIRCUIT_COLUMNS),
        ("models.csv", MODEL_COLUMNS),
        ("noise.csv", NOISE_COLUMNS),
    ):
        lines = (tmp_path / "out" / name).read_text().splitlines()
        assert lines[0] == ",".join(columns) and all(line.count(",") == len(columns) - 1 for line in lines)
