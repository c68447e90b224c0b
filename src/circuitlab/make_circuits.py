"""The command that makes `data/circuits/`: prune tasks on a checkpoint and save each circuit, or, with
`--targets`, measure circuit size against target loss (the paper's Figure 2) into a CSV table.

    python -m circuitlab.make_circuits --model data/checkpoints/sparse --out data/circuits/sparse
    python -m circuitlab.make_circuits --model data/checkpoints/sparse --targets 0.05 0.1 0.15 0.3 \\
        --table data/circuits/size_vs_target.csv --tasks single_double_quote if_equals

Both are resumable: a task whose circuit (or whose rows in the table) exists is skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuitlab import settings, tables, tasks
from circuitlab.model import SparseTransformer
from circuitlab.prune import PruneConfig, mean_ablation_tokens, prune, prune_targets

TABLE_COLUMNS = ("model", "task", "target_loss", "nodes", "edges", "task_loss", "full_model_loss", "seconds")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder, e.g. data/checkpoints/sparse")
    parser.add_argument("--out", help="folder to write one circuit folder per task into")
    parser.add_argument("--targets", nargs="+", type=float, help="target losses for a size-vs-target table")
    parser.add_argument("--table", help="CSV the size-vs-target rows are appended to (with --targets)")
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace circuits that already exist")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE", help="PruneConfig overrides"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.targets is None) or (args.targets is None) != (args.table is None):
        parser.error("pass either --out (circuits) or --targets with --table (a size-vs-target table)")
    try:
        overrides = settings.parse_overrides(PruneConfig, args.set)
        PruneConfig(**overrides)
    except settings.SettingsError as err:
        parser.error(str(err))
    args.tasks = list(dict.fromkeys(args.tasks or tasks.names()))  # a name given twice is pruned once
    unknown = [name for name in args.tasks if name not in tasks.names()]
    if unknown:  # every name is checked before anything is pruned
        parser.error(f"--tasks: no task named {', '.join(map(repr, unknown))}; tasks: {', '.join(tasks.names())}")
    return args, overrides


def save_circuits(model, names, out: Path, overwrite: bool, overrides: dict, pretraining_tokens) -> None:
    for name in names:
        if (out / name / "circuit.json").exists() and not overwrite:
            print(f"{name}: exists, skipped (pass --overwrite to recompute)")
            continue
        start = time.perf_counter()
        circuit = prune(model, tasks.get(name), pretraining_tokens=pretraining_tokens, progress=False, **overrides)
        circuit.search["seconds"] = round(time.perf_counter() - start, 1)
        circuit.save(out / name, overwrite=overwrite)
        print(json.dumps({**circuit.summary(), "search": circuit.search}), flush=True)


def append_size_table(model, label: str, names, targets, table: Path, overrides: dict, pretraining_tokens) -> None:
    tables.start_table(table, TABLE_COLUMNS)
    done = {(row["model"], row["task"]) for row in tables.read_rows(table)}
    for name in names:
        if (label, name) in done:
            print(f"{label}/{name}: in {table}, skipped")
            continue
        start = time.perf_counter()
        circuits = prune_targets(
            model,
            tasks.get(name),
            targets,
            PruneConfig(**overrides),
            pretraining_tokens=pretraining_tokens,
            progress=False,
        )
        seconds = round(time.perf_counter() - start, 1)
        rows = [
            {
                "model": label,
                "task": name,
                "target_loss": target,
                "nodes": c.n_nodes,
                "edges": c.n_edges,
                "task_loss": round(c.task_loss, 5),
                "full_model_loss": round(c.full_model_loss, 5),
                "seconds": seconds,
            }
            for target, c in circuits.items()
        ]
        tables.append_rows(table, TABLE_COLUMNS, rows)  # one task's rows at a time, so an interrupted run resumes
        edges = [row["edges"] for row in rows]
        print(json.dumps({"model": label, "task": name, "edges": edges, "seconds": seconds}), flush=True)


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = SparseTransformer.from_pretrained(args.model)
    pretraining_tokens = mean_ablation_tokens(model)
    if args.out:
        save_circuits(model, args.tasks, Path(args.out), args.overwrite, overrides, pretraining_tokens)
    else:
        label = Path(args.model).name
        append_size_table(model, label, args.tasks, args.targets, Path(args.table), overrides, pretraining_tokens)


if __name__ == "__main__":
    main()
