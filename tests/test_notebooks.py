"""Every chapter runs end to end under papermill with smoke=True; parameters are checked before running."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from circuitlab import handbook
from circuitlab.handbook import chapters, check_parameters, run_notebook
from circuitlab.paths import FIGURES_ENV
from circuitlab.settings import SettingsError

CHAPTERS = chapters()


def test_there_are_chapters():
    assert CHAPTERS and CHAPTERS[0].name == "00_quickstart.ipynb"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_a_smoke_parameter(notebook):
    raw = json.loads(notebook.read_text())
    assert all("id" in cell for cell in raw["cells"]), "give every cell an id: nbformat.validator.normalize"
    nb = nbformat.read(notebook, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "smoke" in code[0].source
    assert not any(cell.get("outputs") for cell in code), "commit notebooks without outputs"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_notebook_executes_with_smoke(notebook, tmp_path):
    executed = run_notebook(notebook, {"smoke": True}, tmp_path)
    nb = nbformat.read(executed, as_version=4)
    if "save_figure(" in notebook.read_text():  # smoke figures never replace the committed full-run ones
        assert list((tmp_path / "figures").glob("*.png"))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    if any("NBVAL_CHECK_OUTPUT" in cell.source for cell in nb.cells if cell.cell_type == "code"):
        # nbval re-runs the executed copy and compares the outputs of the cells marked NBVAL_CHECK_OUTPUT.
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(executed)],
            cwd=notebook.parent,
            capture_output=True,
            text=True,
            env={**os.environ, FIGURES_ENV: str(tmp_path / "figures")},
        )
        assert result.returncode == 0, result.stdout[-3000:]


def toy_notebook(directory) -> Path:
    kernelspec = {"name": "python3", "language": "python", "display_name": "Python 3"}  # as Jupyter saves it
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec})
    source = 'smoke = False\nsteps = 3\nlr = 0.01\nname = "toy"\nstart = 2 ** 3'
    nb.cells = [nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]})]
    nb.cells.append(nbformat.v4.new_code_cell("result = steps * 2\nprint(result)"))
    path = directory / "99_toy.ipynb"
    nbformat.write(nb, path)
    return path


def test_parameters_take_the_types_of_their_defaults_before_a_kernel_starts(tmp_path, monkeypatch):
    path = toy_notebook(tmp_path)
    text = {"steps": "5", "lr": "1e-3", "smoke": "yes", "name": "42", "start": "[1, 2]"}  # as -p passes them
    assert check_parameters(path, text) == {"steps": 5, "lr": 0.001, "smoke": True, "name": "42", "start": [1, 2]}
    for parameters, message in [
        ({"steps": "abc"}, r"99_toy.ipynb: steps='abc' is not a whole number: .* \(its default is 3\)"),
        ({"steps": 2.5}, r"steps=2.5 is not a whole number"),
        ({"smoke": "maybe"}, r"smoke='maybe' is not a boolean: write true or false .* \(its default is False\)"),
        ({"lr": "fast"}, r"lr='fast' is not a finite number"),
        ({"name": 3}, r"name=3 is not text: write it in quotes \(its default is 'toy'\)"),
    ]:
        with pytest.raises(SettingsError, match=message):
            check_parameters(path, parameters)

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel started")

    monkeypatch.setattr(papermill, "execute_notebook", no_kernel)
    with pytest.raises(SystemExit, match=r"circuitlab.handbook: error: 99_toy.ipynb: steps='abc' is not a whole"):
        handbook.main([str(path), "-p", "steps", "abc", "--output-dir", str(tmp_path / "out")])


def test_only_a_run_with_the_default_parameters_writes_the_committed_figures(tmp_path, monkeypatch):
    path, figures = toy_notebook(tmp_path), []
    monkeypatch.delenv(FIGURES_ENV, raising=False)
    monkeypatch.setattr(papermill, "execute_notebook", lambda *args, **kwargs: figures.append(os.getenv(FIGURES_ENV)))
    for parameters in ({}, {"steps": 3, "lr": "1e-2"}, {"steps": 5}, {"smoke": True}, {"start": 8}):
        run_notebook(path, parameters, tmp_path / "out")
    beside = str(tmp_path / "out" / "figures")
    assert figures == [None, None, beside, beside, beside]  # `start` has no literal default: never the default
    monkeypatch.chdir(tmp_path)  # a relative folder is where the command was run, not where the kernel runs
    run_notebook(path, {"steps": 5}, Path("out"))
    assert figures[-1] == beside


def test_unknown_parameter_is_a_clear_error(tmp_path):
    path = toy_notebook(tmp_path)
    with pytest.raises(SettingsError, match=r"no parameter\(s\) \['step'\].*steps \(default 3\)"):
        check_parameters(path, {"step": 5})
    executed = run_notebook(path, {"steps": 5}, tmp_path / "out")
    outputs = nbformat.read(executed, as_version=4).cells[-1].outputs
    assert outputs[0]["text"].strip() == "10"
    with pytest.raises(ValueError, match="Refusing to overwrite the source notebook"):
        run_notebook(path, {}, tmp_path)
