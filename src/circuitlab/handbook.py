"""Run the handbook's notebooks with papermill, checking parameters first.

    python -m circuitlab.handbook                         # every chapter, in order
    python -m circuitlab.handbook 02_pruning -p recompute True -p n_pairs 64
    python -m circuitlab.handbook --smoke                 # every chapter with smoke=True (what CI runs)

Papermill only warns about a parameter a notebook does not declare; here it is an error that names the
notebook and lists the parameters it does take. Executed copies go to the output folder; the source
notebooks are never written.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any
from unittest import mock

import papermill
import yaml

from circuitlab.paths import FIGURES_ENV, REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def chapters(directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks (`00_quickstart.ipynb`, ...) in order."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))


def resolve(name: str) -> Path:
    """A notebook from a path or a chapter name such as `02_pruning` or `02`."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    matches = [p for p in chapters() if p.stem == name or p.stem.startswith(f"{name}_")]
    if len(matches) != 1:
        raise ValueError(f"No single notebook matches {name!r}; chapters: {[p.stem for p in chapters()]}")
    return matches[0]


def check_parameters(notebook: Path, parameters: dict[str, Any]) -> None:
    """Raise a ValueError if `parameters` names anything the notebook's `parameters` cell does not define."""
    known = papermill.inspect_notebook(str(notebook))
    if not known:
        raise ValueError(f"{notebook.name} has no cell tagged 'parameters', so it takes no parameters")
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(
            f"{notebook.name} has no parameter(s) {unknown}. Its parameters are: "
            + ", ".join(f"{name} (default {info['default']})" for name, info in known.items())
        )


def run_notebook(notebook: Path, parameters: dict[str, Any], output_dir: Path) -> Path:
    """Execute `notebook` with `parameters` into `output_dir` (working directory: the notebook's folder).

    A smoke run's figures go to `output_dir/figures`, so it never replaces the committed full-run figures.
    """
    check_parameters(notebook, parameters)
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / notebook.name
    if output.resolve() == notebook.resolve():
        raise ValueError(f"Refusing to overwrite the source notebook {notebook}; choose another output folder.")
    figures = {FIGURES_ENV: str(output_dir / "figures")} if parameters.get("smoke") else {}
    with mock.patch.dict(os.environ, figures):  # the kernel inherits this process's environment
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=str(notebook.parent),
            kernel_name="python3",
            progress_bar=False,
        )
    return output


def parse_value(text: str) -> Any:
    """Like papermill's -p: YAML scalars, so `True`, `3`, `0.5`, `null` and strings all work."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Execute the handbook's notebooks with papermill.")
    parser.add_argument("notebooks", nargs="*", help="chapter names or paths (default: all, in order)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--smoke", action="store_true", help="set smoke=True (tiny, fast runs)")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "build" / "handbook")
    args = parser.parse_args(argv)
    parameters = {name: parse_value(value) for name, value in args.parameter}
    if args.smoke:
        parameters["smoke"] = True
    notebooks = [resolve(name) for name in args.notebooks] or chapters()
    for notebook in notebooks:  # validate everything before running anything
        check_parameters(notebook, parameters)
    for notebook in notebooks:
        start = time.perf_counter()
        output = run_notebook(notebook, parameters, args.output_dir)
        print(f"{notebook.name}: {time.perf_counter() - start:.0f} s -> {output}")


if __name__ == "__main__":
    main()
