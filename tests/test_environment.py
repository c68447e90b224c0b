"""The install is what the README says, for pip and conda users alike, and it resolves here."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_exactly_what_the_readme_installs():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    assert pip_section == ["-c constraints.txt", "-e .[dev]"]
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -c constraints.txt -e ".[dev]"' in readme


def test_torch_is_pinned_to_the_cpu_build():
    constraints = (ROOT / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in constraints


@pytest.mark.parametrize(
    "requirement",
    PYPROJECT["project"]["dependencies"]
    + [r for extra in ("notebooks", "test") for r in PYPROJECT["project"]["optional-dependencies"][extra]],
)
def test_every_requirement_is_installed_and_satisfied(requirement):
    parsed = Requirement(requirement)
    try:
        installed = version(parsed.name)
    except PackageNotFoundError:
        pytest.fail(f"{parsed.name} is required by pyproject.toml but not installed")
    assert parsed.specifier.contains(installed, prereleases=True), f"{parsed.name} {installed} !~ {parsed.specifier}"


def test_the_core_dependencies_are_declared():
    names = {Requirement(r).name for r in PYPROJECT["project"]["dependencies"]}
    assert {"torch", "transformer-lens", "tokenizers", "safetensors", "matplotlib", "pandas"} <= names


def test_transformer_lens_is_pinned_to_the_tested_major_release():
    requirements = (Requirement(r) for r in PYPROJECT["project"]["dependencies"])
    spec = next(r.specifier for r in requirements if r.name == "transformer-lens")
    assert spec.contains("4.0.0") and spec.contains("4.3.0")
    assert not spec.contains("3.9.0") and not spec.contains("5.0.0")
