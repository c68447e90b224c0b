"""The hyper-parameter search: its search space and choice on their own, then real searches on a tiny model
(worker processes, the wall-time budget, the trial table, the returned circuit, repeatability)."""

import json
import os
import time
from dataclasses import replace

import optuna
import pandas as pd
import pytest
import torch

from circuitlab import SparseTransformer
from circuitlab.circuit import Circuit
from circuitlab.prune import PruneConfig
from circuitlab.search import (
    GIVE_UP_FACTOR,
    RESULT_COLUMNS,
    SPACE,
    STUDY_NAME,
    TRIAL_COLUMNS,
    Dimension,
    choose,
    give_up_units,
    journal,
    main,
    run_lock,
    search,
    searched,
    suggest,
)

SMALL = PruneConfig(  # trials of a few seconds on an idle machine (1-19 s measured), longer under load
    steps=6,
    pairs_per_step=4,
    selection_pairs=16,
    test_pairs=16,
    check_pairs=0,  # the check is tested in tests/test_prune.py; here it would only slow the trials
    skip_unsolved=False,
    target_loss=0.57,
    selection_margin=0,
)
FIELDS = [dimension.field for dimension in SPACE]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config) -> str:
    return str(SparseTransformer(tiny_config).save_pretrained(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def text(tiny_config) -> torch.Tensor:
    return torch.randint(0, tiny_config.d_vocab, (4, tiny_config.n_ctx), generator=torch.Generator().manual_seed(0))


def journal_trials(run_dir, states=None) -> list[optuna.trial.FrozenTrial]:
    """The trials a search recorded in its run folder's journal, in the given states (all by default)."""
    return optuna.load_study(study_name=STUDY_NAME, storage=journal(run_dir)).get_trials(states=states)


def test_dimensions_span_a_decade_around_the_base_within_their_caps():
    base = PruneConfig(penalty=3e-3, init_mean=0.5, beta2=0.95, weight_decay=0.0)
    assert Dimension("penalty").bounds(base) == pytest.approx((3e-4, 3e-2))
    assert Dimension("init_mean", cap=1.0).bounds(base) == pytest.approx((0.05, 1.0))
    beta2 = Dimension("beta2", cap=0.5, complement=True)
    assert beta2.param == "inv_beta2"
    assert beta2.bounds(base) == pytest.approx((0.005, 0.5))
    assert beta2.config_value(beta2.centre(base)) == pytest.approx(0.95)
    assert Dimension("penalty").bounds(base, spread=2) == pytest.approx((1.5e-3, 6e-3))
    assert [d.field for d in searched(SPACE, base)] == [f for f in FIELDS if f != "weight_decay"]  # 0: fixed


def test_choose_takes_the_fewest_edges_among_feasible_trials_only():
    table = pd.DataFrame(
        {
            "trial": [0, 1, 2, 3, 4],
            "edges": [3, 10, 10, 12, 0],
            "selection_loss": [0.2, 0.10, 0.05, 0.01, 0.7],
            "feasible": [False, True, True, True, False],
        }
    )
    assert choose(table) == 2  # 0 and 4 have fewer edges but miss the target; 2 ties 1 with a lower loss
    assert choose(table.assign(feasible=False)) == 3  # nothing feasible: the lowest selection loss


def test_trials_give_up_at_four_times_the_nodes_of_the_best_feasible_circuit_so_far():
    study = optuna.create_study()
    assert give_up_units(study) == 0  # nothing to beat yet
    for edges, nodes, feasible in [(50, 30, False), (90, 40, True), (80, 60, True)]:
        record = {"edges": edges, "nodes": nodes, "feasible": feasible}
        study.add_trial(optuna.trial.create_trial(value=edges, user_attrs={"record": record}))
    assert give_up_units(study) == GIVE_UP_FACTOR * 60  # fewest edges among the feasible, not fewest nodes


@pytest.mark.slow
def test_two_workers_run_trials_of_one_study_side_by_side(checkpoint, text, tmp_path):
    result = search(
        checkpoint,
        "if_equals",
        600,  # the search ends at max_trials; wall time on a busy machine must not decide this test
        workers=2,
        base=SMALL,
        max_trials=4,
        pretraining_tokens=text,
        run_dir=tmp_path / "run",
    )
    table = result.trials
    assert list(table.columns) == [*TRIAL_COLUMNS, *FIELDS, *RESULT_COLUMNS]
    finished = journal_trials(tmp_path / "run", states=(optuna.trial.TrialState.COMPLETE,))
    assert len(table) == 4 and table.trial.tolist() == sorted(t.number for t in finished)

    # two processes other than this one, each running trials while the other does
    pids = set(table.worker)
    assert len(pids) == 2 and os.getpid() not in pids
    first, second = (table[table.worker == pid] for pid in pids)
    assert any(
        a.started_s < b.finished_s and b.started_s < a.finished_s
        for a in first.itertuples()
        for b in second.itertuples()
    )

    base = table[table.trial == 0].iloc[0]
    assert [base[f] for f in FIELDS] == pytest.approx([getattr(SMALL, f) for f in FIELDS])
    assert (table.feasible == (table.selection_loss <= SMALL.search_target)).all()
    best = result.best
    assert table.chosen.sum() == 1 and best.trial == choose(table)
    circuit = result.circuit
    assert (circuit.n_nodes, circuit.n_edges) == (best.nodes, best.edges)
    assert (circuit.selection_loss, circuit.task_loss) == pytest.approx((best.selection_loss, best.test_loss))
    assert [circuit.config[f] for f in FIELDS] == pytest.approx([best[f] for f in FIELDS])

    saved = result.save(tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_csv(saved / "trials.csv"), table, check_dtype=False)
    assert Circuit.load(saved).n_edges == best.edges


@pytest.mark.slow
def test_the_search_stops_at_its_budget_once_the_base_trial_has_finished(checkpoint, text, tmp_path):
    budget = 20
    result = search(
        checkpoint, "if_equals", budget, workers=2, base=SMALL, pretraining_tokens=text, run_dir=tmp_path / "run"
    )
    table = result.trials
    assert 0 in set(table.trial)  # the base trial always finishes, however slow the machine
    # not overrun: stopped at the deadline, or when the base trial finished if later (plus polling and loading)
    assert result.seconds <= max(budget, table[table.trial == 0].finished_s.iloc[0]) + 5
    # used: at the deadline a worker was busy (its trial killed, left running in the journal), or the last one
    # stopped because its longest trial would not have ended in time
    killed = journal_trials(tmp_path / "run", states=(optuna.trial.TrialState.RUNNING,))
    assert killed or table.finished_s.max() >= budget - table.seconds.max()


@pytest.mark.slow
def test_one_worker_and_the_same_seed_repeat_the_same_trials(checkpoint, text):
    # max_trials ends both runs; the budget must never bind (under load, a 120-s budget once stopped the second
    # run after a first trial of 71 s, since the next would not have ended in time)
    budget = 900
    runs = [
        search(model, "if_equals", budget, workers=1, base=SMALL, seed=5, max_trials=3, pretraining_tokens=text)
        for model in (checkpoint, SparseTransformer.from_pretrained(checkpoint))  # a folder, then a model
    ]
    compared = [*FIELDS, "nodes", "edges", "selection_loss", "test_loss", "feasible", "chosen"]
    first, second = (run.trials for run in runs)
    assert len(first) == 3 and first.worker.nunique() == 1
    pd.testing.assert_frame_equal(first[compared], second[compared])
    assert runs[0].circuit.nodes == runs[1].circuit.nodes


@pytest.mark.slow
def test_command_line_stops_at_once_when_the_model_cannot_do_the_task(checkpoint, tmp_path, capsys):
    settings = ["steps=2", "selection_pairs=8", "test_pairs=8", "ablation=zero"]  # default target: unreachable
    main(
        [
            "--model",
            checkpoint,
            "--tasks",
            "if_equals",
            "--budget",
            "120",
            "--workers",
            "1",
            "--out",
            str(tmp_path),
            "--set",
            *settings,
        ]
    )
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["trials"] == 1 and summary["seconds"] < 60  # skipped by prune: every setting is the same
    assert not summary["best_feasible"]
    table = pd.read_csv(tmp_path / "if_equals" / "trials.csv")
    circuit = Circuit.load(tmp_path / "if_equals")
    assert len(table) == 1 and circuit.n_nodes == table.nodes[0]


def test_command_line_refuses_bad_settings_before_searching(checkpoint, tmp_path, capsys):
    for argv, message in [
        (["--set", "steps=0"], "steps=0"),
        (["--tasks", "no_such_task"], "no task named 'no_such_task'"),
        (["--budget", "0"], "must be positive"),
        (["--spread", "1"], "--spread 1.0"),
    ]:
        with pytest.raises(SystemExit):
            main(["--model", checkpoint, "--out", str(tmp_path), *argv])
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_an_interrupted_search_continues_where_it_stopped(checkpoint, text, tmp_path):
    run_dir = tmp_path / "run"
    kwargs = {"workers": 1, "base": SMALL, "pretraining_tokens": text, "run_dir": run_dir}
    first = search(checkpoint, "if_equals", 600, max_trials=2, **kwargs).trials
    # a third trial cut off mid-run (a deadline or a crash): its settings drawn, no result
    study = optuna.load_study(study_name=STUDY_NAME, storage=journal(run_dir))
    cut_off = suggest(study.ask(), SMALL, searched(SPACE, SMALL), spread=10)

    called = time.time()
    result = search(checkpoint, "if_equals", 600, max_trials=4, **kwargs)
    assert result.seconds <= time.time() - called  # this call's wall time; the table's clock starts with the first
    resumed = result.trials
    assert resumed.trial.tolist() == [0, 1, 2, 3] and resumed.started_s.iloc[2] > first.finished_s.max()
    pd.testing.assert_frame_equal(resumed.iloc[:2].drop(columns="chosen"), first.drop(columns="chosen"))
    assert [resumed.iloc[2][f] for f in FIELDS] == pytest.approx([cut_off[f] for f in FIELDS])  # run again
    assert [resumed.iloc[3][f] for f in FIELDS] != pytest.approx([first.iloc[1][f] for f in FIELDS])  # new draw
    assert not journal_trials(run_dir, states=(optuna.trial.TrialState.RUNNING,))
    assert not list(run_dir.glob("worker-*.json"))  # the workers' job files go with them

    for change, named in [
        ({"base": replace(SMALL, penalty=SMALL.penalty * 2)}, "base.penalty="),
        ({"spread": 3.0}, "spread=10.0 where this call has 3.0"),
        ({"pretraining_tokens": text + 1}, "pretraining_tokens"),
    ]:
        with pytest.raises(ValueError, match=named):
            search(checkpoint, "if_equals", 600, max_trials=5, **{**kwargs, **change})
    with pytest.raises(ValueError, match="task_name='if_equals' where this call has 'single_double_quote'"):
        search(checkpoint, "single_double_quote", 600, max_trials=5, **kwargs)
    assert len(journal_trials(run_dir)) == 4  # nothing ran


def test_a_search_refuses_a_folder_another_search_holds(checkpoint, tmp_path):
    with run_lock(tmp_path), pytest.raises(RuntimeError, match="another search is running"):
        search(checkpoint, "if_equals", 60, base=SMALL, run_dir=tmp_path)
