"""Imports run one way: no two modules of the package, paper/ or bench/ import each other, directly
or through others, counting imports inside functions too (a function-local import only hides a
cycle from Python's import machinery, not from the reader)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

TOPS = ("experiment", "paper", "bench")


def module_files() -> dict[str, Path]:
    """Dotted module name → file, packages by their __init__.py."""
    found = {}
    for top in TOPS:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` imports anywhere in its file (`from a import b`
    counts as importing a.b when that is a module, else a)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") if node.level else node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return (found & known) - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    files = module_files()
    graph = {name: imported_modules(name, path, set(files)) for name, path in files.items()}
    assert graph["experiment.main"] >= {"experiment.launcher", "experiment.scheduler"}  # the graph is really built
    assert cycles(graph) == []


def test_a_cycle_through_a_function_local_import_is_found(tmp_path):
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text("import second\n")
    second.write_text("def run():\n    from first import thing\n")
    known = {"first", "second"}
    graph = {"first": imported_modules("first", first, known), "second": imported_modules("second", second, known)}
    assert cycles(graph) == [["first", "second"]]


# The layers, lowest first: a module may import its own layer and the ones below, never one above
# (the data flow config → plan → models/data → training/pruning → results → runs → analysis → paper).
LAYERS = (
    ("base", ("experiment.files", "experiment.seeds", "experiment.process", "experiment.distributed",
              "experiment.config.defaults")),
    ("config", ("experiment.config", "experiment.stopping", "experiment.devices")),
    ("plan", ("experiment.plan", "experiment.jobs")),
    ("models and data", ("experiment.models", "experiment.data")),
    ("training and pruning", ("experiment.training", "experiment.pruning")),
    ("results", ("experiment.results", "experiment.report", "experiment.progress")),
    ("runs", ("experiment.chain", "experiment.scheduler", "experiment.workers", "experiment.launcher",
              "experiment.projection", "experiment.main", "experiment")),
    ("analysis", ("experiment.analysis",)),
    ("paper", ("paper", "bench")),
)
# What the config layer validates names against: the registries of the layers it configures (model
# names, datasets, transforms, losses, metrics). These alone it may import from above.
CONFIG_VOCABULARY = ("experiment.models.names", "experiment.data", "experiment.data.transforms",
                     "experiment.training.losses", "experiment.training.metrics")


def layer_of(module: str) -> int:
    """The index in LAYERS of `module`'s layer: the longest prefix that names it."""
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer; add it to LAYERS"
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a (layer) imports b (higher layer)' for every import that points up."""
    found = []
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            if layer_of(other) > layer_of(module) and not (layer_of(module) == 1 and other in CONFIG_VOCABULARY):
                found.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {other} ({LAYERS[layer_of(other)][0]})")
    return found


def test_layers_only_import_downwards():
    files = module_files()
    graph = {name: imported_modules(name, path, set(files)) for name, path in files.items()}
    assert upward_imports(graph) == []


def test_a_planted_upward_import_is_found():
    files = module_files()
    graph = {name: imported_modules(name, path, set(files)) for name, path in files.items()}
    graph["experiment.training.loop"] = graph["experiment.training.loop"] | {"experiment.results.tree"}
    assert upward_imports(graph) == ["experiment.training.loop (training and pruning) imports experiment.results.tree (results)"]
