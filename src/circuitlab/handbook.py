"""Run the handbook's notebooks with papermill, checking parameters first.

    python -m circuitlab.handbook                         # every chapter, in order
    python -m circuitlab.handbook 02_pruning -p recompute True -p n_pairs 64
    python -m circuitlab.handbook --smoke                 # every chapter with smoke=True (what CI runs)

Papermill only warns about a parameter a notebook does not declare and passes any value; here an unknown
name is an error that lists the parameters the notebook takes, and each value is coerced to the type of its
default in the `parameters` cell (or refused, naming it), all before a kernel starts. Executed copies go to
the output folder; the source notebooks are never written. Only a run with the default parameters writes
`figures/`: any other run (smoke runs included) writes its figures beside the executed notebooks.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import papermill

from circuitlab import settings
from circuitlab.paths import FIGURES_ENV, REPO_ROOT
from circuitlab.settings import SettingsError

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


NOT_A_LITERAL = object()  # a default written as an expression: any value is accepted


def defaults(notebook: Path) -> dict[str, Any]:
    """The parameters of `notebook`'s `parameters` cell and their default values."""
    known = papermill.inspect_notebook(str(notebook))
    if not known:
        raise SettingsError(f"{notebook.name} has no cell tagged 'parameters', so it takes no parameters")
    values = {}
    for name, info in known.items():
        try:
            values[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            values[name] = NOT_A_LITERAL
    return values


def check_parameters(notebook: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """`parameters` coerced to the types of the notebook's defaults (text as from the command line, or Python
    values); an unknown name or a value of the wrong type is a SettingsError that names it."""
    known = defaults(notebook)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise SettingsError(
            f"{notebook.name} has no parameter(s) {unknown}. Its parameters are: "
            + ", ".join(f"{name} (default {value!r})" for name, value in known.items())
        )
    checked = {}
    for name, value in parameters.items():
        kind = type(known[name])
        annotation = kind if kind in (bool, int, float, str) else Any
        try:
            checked[name] = settings.coerce(value, annotation, name)
        except SettingsError as err:
            raise SettingsError(f"{notebook.name}: {err} (its default is {known[name]!r})") from None
    return checked


def run_notebook(notebook: Path, parameters: dict[str, Any], output_dir: Path) -> Path:
    """Execute `notebook` with `parameters` into `output_dir` (working directory: the notebook's folder).

    Unless every parameter has its default value, figures go to `output_dir/figures`, so only a default run
    writes the committed full-run figures.
    """
    parameters = check_parameters(notebook, parameters)
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / notebook.name
    if output.resolve() == notebook.resolve():
        raise ValueError(f"Refusing to overwrite the source notebook {notebook}; choose another output folder.")
    default = defaults(notebook)
    custom = any(value != default[name] for name, value in parameters.items())
    figures = {FIGURES_ENV: str((output_dir / "figures").resolve())} if custom else {}  # the kernel runs elsewhere
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Execute the handbook's notebooks with papermill.")
    parser.add_argument("notebooks", nargs="*", help="chapter names or paths (default: all, in order)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--smoke", action="store_true", help="set smoke=True (tiny, fast runs)")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "build" / "handbook")
    args = parser.parse_args(argv)
    parameters: dict[str, Any] = dict(args.parameter)  # text, coerced per notebook by check_parameters
    if args.smoke:
        parameters["smoke"] = True
    notebooks = [resolve(name) for name in args.notebooks] or chapters()
    try:
        for notebook in notebooks:  # validate everything before running anything
            check_parameters(notebook, parameters)
    except SettingsError as err:
        sys.exit(f"circuitlab.handbook: error: {err}")
    for notebook in notebooks:
        start = time.perf_counter()
        output = run_notebook(notebook, parameters, args.output_dir)
        print(f"{notebook.name}: {time.perf_counter() - start:.0f} s -> {output}")


if __name__ == "__main__":
    main()
