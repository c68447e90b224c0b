"""Per-task hyper-parameter search for the pruner, within a wall-time budget, on every core.

The paper tuned its pruning settings per (model, task) with CARBS: 32 rounds of 8 parallel trials around a
search centre, with results "poor early and improving late". Here the same seven settings are searched with
Optuna's TPE sampler (seeded), each log-uniform within a factor `spread` (a decade by default) either side of
the base config, and the first trial is the base config itself, so the search never returns a circuit worse
than the default one.

* **Objective:** the circuit's edge count. A trial whose *selection* loss misses `cfg.search_target` is
  infeasible and scores the full model's edge count; the *test* loss (`Circuit.task_loss`) never steers the
  search and stays the honest held-out report. (The best of many trials is chosen on the selection pairs, so
  its selection loss flatters it a little; the test loss shows by how much.)
* **Parallelism:** `workers` processes, one torch thread each, share one study through a journal
  file (`optuna.storages.JournalStorage`). Each loads the model from its checkpoint folder and saves each
  trial's circuit in the run folder; the caller gets the best one back, loaded with the model.
* **Hopeless trials:** some settings let the masks collapse (thousands of nodes), and the cleanups of such a
  circuit take the longest of all. Once a circuit is feasible, a trial whose search for k keeps more than
  `GIVE_UP_FACTOR` times its nodes stops there (`PruneConfig.give_up_units`), scores its uncleaned edges and
  is marked `given_up`.
* **Budget:** a worker starts no trial after the deadline (`timeout`), nor one that its longest trial so far
  says would end past it, and a trial still running at the deadline is stopped, so the search ends on time
  (plus loading the best circuit); only the base trial is always waited for.
* **Resuming:** a search given a `run_dir` that already holds one continues it with a fresh budget: the same
  study, its finished trials kept, trials cut off by a deadline or a crash run again with their settings and
  numbers. The folder's `search.json` says what it searches; a call that asks for anything else is refused.

    result = search("data/checkpoints/sparse", "single_double_quote", budget_s=480)
    result.circuit, result.trials          # the best circuit; one row per finished trial (TRIAL_COLUMNS)
    result.save("data/circuits/sparse/single_double_quote")     # the circuit and its trials.csv
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from circuitlab import settings, tasks
from circuitlab.checkpoint import differences, save_model, write_text_atomic
from circuitlab.circuit import Circuit, circuit_edges, node_shapes
from circuitlab.model import SparseTransformer
from circuitlab.prune import PruneConfig, mean_ablation_tokens, prune

STUDY_NAME = "prune"
JOURNAL_FILE = "journal.log"
MANIFEST_FILE = "search.json"
LOCK_FILE = "search.lock"
TOKENS_FILE = "pretraining_tokens.safetensors"
TRIALS_FILE = "trials.csv"
WORKER_COMMAND = "import sys; from circuitlab.search import run_worker; run_worker(sys.argv[1])"
STARTUP_TRIALS = 8  # trials sampled at random before TPE starts modelling the results
GIVE_UP_FACTOR = 4  # a trial whose search for k keeps more units than this times the best circuit's nodes stops


@dataclass(frozen=True)
class Dimension:
    """One searched `PruneConfig` field: log-uniform within a factor `spread` either side of its base value, at
    most `cap`. With `complement` the searched quantity is 1 - value (the paper searches 1 - beta2)."""

    field: str
    cap: float = math.inf
    complement: bool = False

    @property
    def param(self) -> str:
        """The name Optuna records."""
        return f"inv_{self.field}" if self.complement else self.field

    def centre(self, base: PruneConfig) -> float:
        value = getattr(base, self.field)
        return 1 - value if self.complement else value

    def bounds(self, base: PruneConfig, spread: float = 10.0) -> tuple[float, float]:
        centre = self.centre(base)
        return centre / spread, max(centre, min(centre * spread, self.cap))

    def config_value(self, searched: float) -> float:
        return 1 - searched if self.complement else searched


SPACE = (
    Dimension("penalty"),  # the paper's k_coef
    Dimension("lr"),
    Dimension("init_mean", cap=1.0),  # scores are clamped to [-1, 1]
    Dimension("init_std"),
    Dimension("weight_decay"),
    Dimension("beta2", cap=0.5, complement=True),
    Dimension("heaviside_temp"),
)
"""The paper's seven searched settings. A field whose base value is 0 (or beta2 = 1) is left fixed."""

TRIAL_COLUMNS = ("trial", "worker", "started_s", "finished_s", "seconds")
RESULT_COLUMNS = ("nodes", "edges", "selection_loss", "test_loss", "feasible", "given_up", "chosen")
"""The trial table: trial number, worker pid, start and end (seconds after the search began), its duration,
then one column per searched field (its `PruneConfig` value), then the circuit's results."""


def searched(space: Sequence[Dimension], base: PruneConfig) -> tuple[Dimension, ...]:
    """The dimensions of `space` that can be searched around `base` (a log range needs a positive centre)."""
    return tuple(dimension for dimension in space if dimension.centre(base) > 0)


def suggest(trial: optuna.Trial, base: PruneConfig, space: Sequence[Dimension], spread: float) -> dict[str, float]:
    """The trial's `PruneConfig` overrides, one per dimension."""
    return {d.field: d.config_value(trial.suggest_float(d.param, *d.bounds(base, spread), log=True)) for d in space}


@dataclass(frozen=True)
class WorkerJob:
    """What a worker process needs to run trials of one study (plain values: it travels as JSON)."""

    checkpoint: str
    task_name: str
    base: dict
    space: tuple[Dimension, ...]
    spread: float
    run_dir: str
    sampler_seed: int
    started: float  # time.time() when the search began (its first run, if resumed)
    deadline: float  # time.time() by which the last trial should have finished
    full_model_edges: int  # the score of an infeasible trial
    max_trials: int | None

    @classmethod
    def from_json(cls, text: str) -> WorkerJob:
        values = json.loads(text)
        return cls(**{**values, "space": tuple(Dimension(**d) for d in values["space"])})


class StopBeforeOverrun:
    """Optuna callback: stop the worker when its longest trial so far would not end before the deadline."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.longest = 0.0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.duration is not None:  # None only for a trial that never started
            self.longest = max(self.longest, trial.duration.total_seconds())
        if time.time() + self.longest > self.deadline:
            study.stop()


@contextlib.contextmanager
def optuna_verbosity(level: int) -> Iterator[None]:
    """Optuna's log level set for the duration, then restored."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def journal(run_dir: str | Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(run_dir) / JOURNAL_FILE)))


def trial_dir(run_dir: str | Path, number: int) -> Path:
    return Path(run_dir) / "trials" / f"{number:04d}"


def give_up_units(study: optuna.Study) -> int:
    """`GIVE_UP_FACTOR` times the nodes of the best feasible circuit so far (fewest edges); 0 before there is one."""
    finished = [trial.user_attrs["record"] for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    feasible = [(record["edges"], record["nodes"]) for record in finished if record["feasible"]]
    return GIVE_UP_FACTOR * min(feasible)[1] if feasible else 0


def run_worker(job_file: str | Path) -> None:
    """One worker process: load the model, then run trials of the shared study until the budget is spent."""
    job = WorkerJob.from_json(Path(job_file).read_text())
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    model = SparseTransformer.from_pretrained(job.checkpoint)
    task = tasks.get(job.task_name)
    base = PruneConfig(**job.base)
    tokens_path = Path(job.run_dir) / TOKENS_FILE
    pretraining_tokens = load_file(tokens_path)["tokens"] if tokens_path.exists() else None

    def objective(trial: optuna.Trial) -> float:
        overrides: dict[str, Any] = suggest(trial, base, job.space, job.spread)
        cfg = replace(base, **overrides, give_up_units=give_up_units(trial.study) or base.give_up_units)
        start = time.time()
        circuit = prune(model, task, cfg, pretraining_tokens=pretraining_tokens, progress=False)
        circuit.save(trial_dir(job.run_dir, trial.number), overwrite=True)  # a rerun trial replaces its circuit
        end = time.time()
        feasible = circuit.selection_loss <= cfg.search_target
        record = {
            "worker": os.getpid(),
            "started_s": round(start - job.started, 2),
            "finished_s": round(end - job.started, 2),
            "seconds": round(end - start, 2),
            **overrides,
            "nodes": circuit.n_nodes,
            "edges": circuit.n_edges,
            "selection_loss": circuit.selection_loss,
            "test_loss": circuit.task_loss,
            "feasible": feasible,
            "given_up": bool(circuit.search.get("given_up", False)),
        }
        trial.set_user_attr("record", record)
        if not circuit.history:  # prune skipped mask training (skip_unsolved): every setting gives this circuit
            trial.study.stop()
        return circuit.n_edges if feasible else job.full_model_edges

    sampler = optuna.samplers.TPESampler(
        seed=job.sampler_seed, n_startup_trials=STARTUP_TRIALS, multivariate=True, constant_liar=True
    )
    study = optuna.load_study(study_name=STUDY_NAME, storage=journal(job.run_dir), sampler=sampler)
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [StopBeforeOverrun(job.deadline)]
    if job.max_trials is not None:
        callbacks.append(
            optuna.study.MaxTrialsCallback(job.max_trials, states=(TrialState.COMPLETE, TrialState.RUNNING))
        )
    remaining = job.deadline - time.time()
    if remaining > 0:
        study.optimize(objective, timeout=remaining, callbacks=callbacks)


@dataclass
class SearchResult:
    """The best trial's circuit and the table of every finished trial (`TRIAL_COLUMNS`, the searched fields,
    `RESULT_COLUMNS`; `chosen` marks the circuit's trial, trial 0 is the base config)."""

    circuit: Circuit
    trials: pd.DataFrame
    seconds: float  # wall time of this call (of its last run, if resumed), model loading and start-up included
    workers: int

    @property
    def best(self) -> pd.Series:
        return self.trials[self.trials.chosen].iloc[0]

    @property
    def base(self) -> pd.Series:
        return self.trials[self.trials.trial == 0].iloc[0]

    def summary(self) -> dict:
        base, best = self.base, self.best
        return {
            "task": self.circuit.task_name,
            "seconds": round(self.seconds, 1),
            "workers": self.workers,
            "trials": len(self.trials),
            "feasible_trials": int(self.trials.feasible.sum()),
            "best_trial": int(best.trial),
            **{
                f"{which}_{key}": _plain(row[key])
                for which, row in (("base", base), ("best", best))
                for key in ("feasible", "nodes", "edges", "selection_loss", "test_loss")
            },
            "best_config": {field: _plain(best[field]) for field in self.searched_fields},
        }

    @property
    def searched_fields(self) -> list[str]:
        known = set(TRIAL_COLUMNS) | set(RESULT_COLUMNS)
        return [column for column in self.trials.columns if column not in known]

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """The circuit (`Circuit.save`) with the trial table beside it as trials.csv."""
        directory = self.circuit.save(directory, overwrite=overwrite)
        write_text_atomic(directory / TRIALS_FILE, self.trials.to_csv(index=False))
        return directory


def _plain(value):
    """A numpy scalar as the Python value JSON writes, floats to four significant digits."""
    value = value.item() if hasattr(value, "item") else value
    return float(f"{value:.4g}") if isinstance(value, float) else value


def search(
    model: SparseTransformer | str | Path,
    task_name: str,
    budget_s: float,
    *,
    workers: int = 2,
    base: PruneConfig | None = None,
    seed: int = 0,
    max_trials: int | None = None,
    space: Sequence[Dimension] = SPACE,
    spread: float = 10.0,
    pretraining_tokens: Tensor | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search the pruning settings of `space`, within a factor `spread` of `base`, for the fewest edges at the
    target, in `budget_s` seconds of wall time with `workers` processes; return the best circuit and the table.

    `model` is a checkpoint folder, or a model (saved into the run folder for the workers to load). `seed` seeds
    the sampler (worker i uses seed + i): one worker and the same seed repeat the same trials. `max_trials`
    stops the search once that many trials have run. The run folder (journal, each trial's circuit) is a
    temporary one unless `run_dir` is given; a `run_dir` that holds a search continues it (module docstring),
    offsetting the seeds so as not to draw its earlier trials again. Pretraining tokens for mean ablation are
    sampled as `prune` does unless given.
    """
    called = started = time.time()
    base = base or PruneConfig()
    tasks.get(task_name)  # an unknown task fails here, before any process starts
    if budget_s <= 0 or workers < 1 or (max_trials is not None and max_trials < 1):
        raise ValueError(f"budget_s={budget_s}, workers={workers} and max_trials={max_trials} must be positive")
    if not spread > 1:
        raise ValueError(f"spread={spread}: the searched range is base / spread to base * spread; pass spread > 1")
    space = searched(space, base)
    with contextlib.ExitStack() as stack:
        stack.enter_context(optuna_verbosity(optuna.logging.WARNING))
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="circuitlab-search-")))
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(run_lock(run_dir))
        in_memory = isinstance(model, SparseTransformer)
        if isinstance(model, SparseTransformer):
            checkpoint = run_dir / "model"  # saved there for the workers (below), unless resuming
        else:
            checkpoint, model = Path(model), SparseTransformer.from_pretrained(model)
        manifest = {
            "task_name": task_name,
            "model_sha256": weights_sha256(model),
            **{f"base.{field}": value for field, value in asdict(base).items()},
            "space": [asdict(dimension) for dimension in space],
            "spread": spread,
        }
        manifest = json.loads(json.dumps(manifest))  # tuples as lists, as the file holds them
        tokens_file = run_dir / TOKENS_FILE
        if (run_dir / JOURNAL_FILE).exists():
            started = continue_run(run_dir, manifest, pretraining_tokens)
            study = optuna.load_study(study_name=STUDY_NAME, storage=journal(run_dir))
        else:
            if in_memory:
                save_model(model, checkpoint, overwrite=True)
            if base.ablation == "mean":
                if pretraining_tokens is None:
                    pretraining_tokens = mean_ablation_tokens(model)
                save_file({"tokens": pretraining_tokens.contiguous()}, tokens_file)
            write_text_atomic(run_dir / MANIFEST_FILE, json.dumps({**manifest, "started": started}, indent=1) + "\n")
            study = optuna.create_study(study_name=STUDY_NAME, storage=journal(run_dir), direction="minimize")
            study.enqueue_trial({d.param: d.centre(base) for d in space})
        everything = {name: torch.ones(shape, dtype=torch.bool) for name, shape in node_shapes(model).items()}
        job = WorkerJob(
            checkpoint=str(checkpoint),
            task_name=task_name,
            base=asdict(base),
            space=space,
            spread=spread,
            run_dir=str(run_dir),
            sampler_seed=seed + workers * len(study.trials),
            started=started,
            deadline=time.time() + budget_s,
            full_model_edges=len(circuit_edges(model, everything)),
            max_trials=max_trials,
        )
        if max_trials is None or len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < max_trials:
            run_workers(job, workers, study, progress)
        table = trial_table(study)
        if table.empty:
            raise RuntimeError(
                f"no trial of {task_name} finished within budget_s={budget_s}: raise the budget (a trial takes "
                "about the time `prune` does) or lower `steps`."
            )
        circuit = Circuit.load(trial_dir(run_dir, int(table.trial[table.chosen].iloc[0])), model)
    return SearchResult(circuit, table, seconds=time.time() - called, workers=workers)


def weights_sha256(model: SparseTransformer) -> str:
    """A fingerprint of the model's weights (names, dtypes and bytes), the same wherever it is saved."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder for this search: a second search in the same folder would rerun this one's trials."""
    with open(run_dir / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another search is running in {run_dir}; wait for it or choose another folder."
            ) from None
        yield


def continue_run(run_dir: Path, manifest: dict, pretraining_tokens: Tensor | None) -> float:
    """Check that the search in `run_dir` is the one `manifest` asks for, and put the trials an interrupted run
    left running back in the queue (their settings and numbers kept); return when the search first began."""
    path = run_dir / MANIFEST_FILE
    if not path.exists():
        raise FileExistsError(f"{run_dir} holds a search journal but no {MANIFEST_FILE}; choose an empty folder.")
    defaults = {f"base.{field}": value for field, value in json.loads(json.dumps(asdict(PruneConfig()))).items()}
    recorded = defaults | json.loads(path.read_text())  # a setting newer than the search ran with its default
    mismatched = differences({k: recorded.get(k) for k in manifest}, manifest, "this call")
    tokens_file = run_dir / TOKENS_FILE
    if pretraining_tokens is not None and not (
        tokens_file.exists() and torch.equal(load_file(tokens_file)["tokens"], pretraining_tokens)
    ):
        mismatched.append(f"pretraining_tokens: this call passes others than {tokens_file}")
    if mismatched:
        raise ValueError(
            f"{path} records another search: {'; '.join(mismatched)}. Pass the same model, task and settings to "
            "continue it, or choose an empty folder for a new search."
        )
    storage = journal(run_dir)
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(
            storage.get_trial_id_from_study_id_trial_number(study_id, trial.number), TrialState.WAITING
        )
    return float(recorded["started"])


def run_workers(job: WorkerJob, workers: int, study: optuna.Study, progress: bool) -> None:
    """Run `workers` worker processes until they stop, showing the time spent, trials finished and best edges.

    Workers are fresh interpreters (`subprocess`), not forks: they share no torch threads with the caller and,
    unlike multiprocessing's spawn, never re-import the caller's script. A worker still busy at the deadline is
    stopped and its trial lost, except while the base trial (trial 0) is unfinished: the search waits for it, so
    there is always a result and it is never worse than the default. A failing worker stops the search.
    """
    processes: list[subprocess.Popen] = []
    job_files = [Path(job.run_dir) / f"worker-{i}.json" for i in range(workers)]
    opened = time.time()
    budget = round(job.deadline - opened)
    try:
        for i, job_file in enumerate(job_files):
            write_text_atomic(job_file, json.dumps(asdict(replace(job, sampler_seed=job.sampler_seed + i))))
            processes.append(subprocess.Popen([sys.executable, "-c", WORKER_COMMAND, str(job_file)]))
        with tqdm(total=budget, unit="s", desc=f"search {job.task_name}", disable=not progress) as bar:
            while any(process.poll() is None for process in processes):
                time.sleep(1)
                finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                crashed = any(process.returncode for process in processes)
                if crashed or (time.time() >= job.deadline and any(trial.number == 0 for trial in finished)):
                    break
                bar.n = min(budget, round(time.time() - opened))
                best = min((trial.value for trial in finished if trial.value is not None), default=None)
                bar.set_postfix(trials=len(finished), best_edges=best)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.wait()
        for job_file in job_files:
            job_file.unlink(missing_ok=True)
    failed = [process.returncode for process in processes if process.returncode not in (0, -signal.SIGTERM)]
    if failed:
        raise RuntimeError(f"{len(failed)} search worker(s) failed (exit codes {failed}); see the traceback above")


def trial_table(study: optuna.Study) -> pd.DataFrame:
    """One row per finished trial, in trial order, with the `chosen` column set (see `choose`)."""
    rows = [
        {"trial": trial.number, **record, "given_up": record.get("given_up", False)}  # older records lack it
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for record in [trial.user_attrs["record"]]
    ]
    if not rows:
        return pd.DataFrame(columns=[*TRIAL_COLUMNS, *RESULT_COLUMNS])
    table = pd.DataFrame(rows).sort_values("trial", ignore_index=True)
    table["chosen"] = table.trial == choose(table)
    return table


def choose(table: pd.DataFrame) -> int:
    """The trial whose circuit the search returns: the fewest edges among feasible trials (ties: the lower
    selection loss, then the earlier trial); with no feasible trial, the lowest selection loss."""
    feasible = table[table.feasible]
    if feasible.empty:
        return int(table.sort_values(["selection_loss", "trial"]).trial.iloc[0])
    return int(feasible.sort_values(["edges", "selection_loss", "trial"]).trial.iloc[0])


def main(argv: list[str] | None = None) -> None:
    """Search pruning settings per task on a checkpoint; save each best circuit with its trials.csv."""
    parser = argparse.ArgumentParser(description="Search pruning hyper-parameters per task within a time budget.")
    parser.add_argument("--model", required=True, help="checkpoint folder, e.g. data/checkpoints/sparse")
    parser.add_argument("--out", required=True, help="folder to write one circuit folder (with trials.csv) per task")
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    parser.add_argument("--budget", type=float, default=480.0, help="wall-time seconds per task (default 480)")
    parser.add_argument("--workers", type=int, default=2, help="parallel trial processes, one thread each")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--max-trials", type=int, help="stop a task's search after this many trials")
    parser.add_argument(
        "--spread", type=float, default=10.0, help="search each setting from base / spread to base * spread (10)"
    )
    parser.add_argument(
        "--runs",
        help="keep each task's run (journal, every trial's circuit) in RUNS/<task>; a search found there continues",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace circuits that already exist")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE", help="base PruneConfig overrides"
    )
    args = parser.parse_args(argv)
    try:
        base = PruneConfig(**settings.parse_overrides(PruneConfig, args.set))
    except settings.SettingsError as err:
        parser.error(str(err))
    if args.budget <= 0 or args.workers < 1 or (args.max_trials is not None and args.max_trials < 1):
        parser.error("--budget, --workers and --max-trials must be positive")
    if not args.spread > 1:
        parser.error(f"--spread {args.spread}: the searched range is base / spread to base * spread; pass more than 1")
    names = args.tasks or tasks.names()
    unknown = [name for name in names if name not in tasks.names()]
    if unknown:
        parser.error(f"--tasks: no task named {', '.join(map(repr, unknown))}; tasks: {', '.join(tasks.names())}")
    for name in names:
        out = Path(args.out) / name
        run_dir = Path(args.runs) / name if args.runs else None
        continuing = run_dir is not None and (run_dir / JOURNAL_FILE).exists()  # its best replaces the last one
        if (out / "circuit.json").exists() and not (args.overwrite or continuing):
            print(f"{name}: exists, skipped (pass --overwrite to recompute)")
            continue
        result = search(
            args.model,
            name,
            args.budget,
            workers=args.workers,
            base=base,
            seed=args.seed,
            max_trials=args.max_trials,
            spread=args.spread,
            run_dir=run_dir,
        )
        result.save(out, overwrite=args.overwrite or continuing)
        print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
