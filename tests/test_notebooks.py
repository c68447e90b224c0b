"""Every chapter runs end to end under papermill with smoke=True; parameters are checked before running."""

import os
import subprocess
import sys

import nbformat
import pytest

from circuitlab.handbook import chapters, check_parameters, run_notebook
from circuitlab.paths import FIGURES_ENV

CHAPTERS = chapters()


def test_there_are_chapters():
    assert CHAPTERS and CHAPTERS[0].name == "00_quickstart.ipynb"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_a_smoke_parameter(notebook):
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


def test_unknown_parameter_is_a_clear_error(tmp_path):
    kernelspec = {"name": "python3", "language": "python", "display_name": "Python 3"}  # as Jupyter saves it
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec})
    nb.cells = [nbformat.v4.new_code_cell("smoke = False\nsteps = 3", metadata={"tags": ["parameters"]})]
    nb.cells.append(nbformat.v4.new_code_cell("result = steps * 2\nprint(result)"))
    path = tmp_path / "99_toy.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['step'\].*steps \(default 3\)"):
        check_parameters(path, {"step": 5})
    executed = run_notebook(path, {"steps": 5}, tmp_path / "out")
    outputs = nbformat.read(executed, as_version=4).cells[-1].outputs
    assert outputs[0]["text"].strip() == "10"
    with pytest.raises(ValueError, match="Refusing to overwrite the source notebook"):
        run_notebook(path, {}, tmp_path)
