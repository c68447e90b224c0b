"""The shape of the library: modules in layers that import only downwards, no import cycles (function-level
imports included), no project imports hidden in functions, and no module longer than about 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import circuitlab

PACKAGE = Path(circuitlab.__file__).parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("paths", "settings", "tables", "fused", "discretize", "tasks.codegen"),  # no project imports
    ("config", "abstopk", "tokenizer", "snapshot", "tasks.core"),  # tasks.core frames prompts with tasks.codegen
    # the task families; checkpoint: every on-disk format of models and training state
    ("tasks.strings", "tasks.brackets", "tasks.variables", "tasks.control", "tasks.definitions", "tasks.syntax"),
    ("checkpoint", "tasks.harvest.scan"),  # tasks.harvest.scan: reading one file's code for the harvesters
    tuple(f"tasks.harvest.{family}" for family in ("strings", "brackets", "variables", "control", "definitions")),
    ("sparsity", "model", "tasks.harvest"),
    ("compat", "tasks", "bridges"),  # bridges: maps between a dense and a sparse model's residual streams
    ("synthetic", "circuit"),
    ("build", "plotting", "explorer", "compare", "printout"),  # build: the snapshot, tokenizer and token stream files
    ("corpus", "frontier", "masks"),  # reading the token streams; a sweep's tables (chapter 08); node masks
    ("prune", "train", "evaluate", "handbook"),
    ("search", "controls", "steering"),  # each runs the pruner (search: in worker processes)
    # the commands that make data/circuits/, controls/, frontier/, bridges/ and steering/
    ("make_circuits", "make_controls", "sweep", "make_bridges", "make_steering"),
    ("candidates",),  # data/candidates/: compares trained models, measuring circuits as the sweep does
    ("circuitlab",),  # the package's own __init__
)
"""A module may import only from a layer below its own."""

LAYER = {module: level for level, modules in enumerate(LAYERS) for module in modules}

MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "circuitlab"


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _target(dotted: str) -> str:
    """The project module that ``import circuitlab.<dotted>`` or ``from circuitlab.<dotted> import ...`` loads."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or "circuitlab"


def project_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported project module, whether the import sits inside a function) for each import in ``path``."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(
                (_target(alias.name.removeprefix("circuitlab").lstrip(".")), in_function)
                for alias in node.names
                if alias.name.split(".")[0] == "circuitlab"
            )
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "circuitlab":
            base = node.module.removeprefix("circuitlab").lstrip(".")
            found.extend((_target(f"{base}.{alias.name}".lstrip(".")), in_function) for alias in node.names)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return  # annotations only: never imported at run time
        in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(ast.parse(path.read_text()), False)
    return [(target, in_function) for target, in_function in found if target != module_name(path)]


GRAPH = {module: project_imports(path) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYER), "add new modules to LAYERS (and drop deleted ones)"


def test_the_import_reader_sees_every_form_of_import():
    assert ("tasks.core", False) in GRAPH["tasks.strings"]  # from circuitlab.tasks.core import ...
    assert ("tasks", False) in GRAPH["synthetic"]  # from circuitlab import tasks
    assert ("checkpoint", False) in GRAPH["model"]
    assert ("prune", False) in GRAPH["circuitlab"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_imports(module):
    upward = [t for t, _ in GRAPH[module] if LAYER[t] >= LAYER[module]]
    assert not upward, f"{module} (layer {LAYER[module]}) imports {upward} from its own layer or above"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_project_imports_hidden_in_functions(module):
    hidden = [t for t, in_function in GRAPH[module] if in_function]
    assert not hidden, f"{module} imports {hidden} inside functions; import at the top (a cycle is the reason?)"


def strongly_connected_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: every set of modules that import one another in a ring."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph[node]:
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while node not in component:
                component.add(stack.pop())
            components.append(component)

    for node in graph:
        if node not in index:
            connect(node)
    return components


def test_no_import_cycles_counting_function_level_imports():
    edges = {module: {target for target, _ in imports} for module, imports in GRAPH.items()}
    cycles = [component for component in strongly_connected_components(edges) if len(component) > 1]
    assert not cycles, cycles


def test_the_cycle_finder_finds_rings():
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}}
    assert sorted(map(sorted, strongly_connected_components(ring))) == [["a", "b", "c"], ["d", "e"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by job"
