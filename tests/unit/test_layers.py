"""The package is layered: a module imports only from layers below its own, and no modules
import each other in a cycle. Every import counts, function-local ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import ai_distributed_training

PACKAGE = ai_distributed_training.__name__
ROOT = Path(ai_distributed_training.__file__).parent

#: Bottom first. A top-level module or folder may import from the layers before its own.
LAYERS: list[set[str]] = [
    {"errors", "result"},
    {"host"},
    {"config"},
    {"topology"},
    {"data"},
    {"models"},
    {"training"},
    {"launch"},
    {"planner"},
    {"rundir", "report"},
    {"watch"},
    {"prepare"},
    {"simulate"},
    {"run"},
    {"api"},
    {"__init__"},
    {"cli"},
    {"__main__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a folder's ``__init__`` by the folder's)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports, anywhere in its code."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from X import y``: y may be a submodule of X, else a name inside X.
            found.update(
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            )
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def unit(module: str) -> str:
    """The top-level module or folder a module belongs to (the package itself: ``__init__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a module to a layer that is not below its own (or to an unlisted one)."""
    bad = []
    for module, targets in graph.items():
        for target in targets:
            a, b = unit(module), unit(target)
            if a == b:
                continue
            if a not in LAYER or b not in LAYER or LAYER[b] >= LAYER[a]:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (strongly connected components of more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_top_level_module_has_a_layer() -> None:
    units = {unit(m) for m in module_names()}
    assert units - set(LAYER) == set(), "add new top-level modules to LAYERS"


def test_no_module_imports_upward() -> None:
    assert upward_imports(import_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_checks_see_function_local_upward_imports_and_cycles(tmp_path: Path) -> None:
    """The scan itself: an import hidden in a function is found, and so is a cycle."""
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "loop.py").write_text(
        "def train():\n    from ..launch import elastic\n    from .step import x\n"
    )
    (tmp_path / "training" / "step.py").write_text("from .loop import train\nx = 1\n")
    modules = {
        f"{PACKAGE}.training.loop",
        f"{PACKAGE}.training.step",
        f"{PACKAGE}.launch.elastic",
        f"{PACKAGE}.launch",
    }
    graph = {
        f"{PACKAGE}.training.loop": imports_of(
            f"{PACKAGE}.training.loop", tmp_path / "training" / "loop.py", modules
        ),
        f"{PACKAGE}.training.step": imports_of(
            f"{PACKAGE}.training.step", tmp_path / "training" / "step.py", modules
        ),
    }
    assert upward_imports(graph) == [f"{PACKAGE}.training.loop -> {PACKAGE}.launch.elastic"]
    assert cycles(graph) == [[f"{PACKAGE}.training.loop", f"{PACKAGE}.training.step"]]


def long_functions(root: Path, limit: int = 60) -> list[str]:
    """Functions under ``root`` longer than ``limit`` lines (nested ones counted on their own
    as well as in their parent)."""
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    long.append(f"{path.relative_to(root)}:{node.name} ({lines} lines)")
    return long


def test_no_function_in_the_package_is_long() -> None:
    """Functions stay short enough to read in one sitting (~60 lines), everywhere."""
    assert long_functions(ROOT) == []


def test_the_length_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}")
    assert long_functions(tmp_path) == ["m.py:long (61 lines)"]


#: The layers below ``prepare`` take typed sections (config.sections), never the flat settings.
BELOW_PREPARE = {u for units in LAYERS[: LAYER["prepare"]] for u in units} - {"config"}


def settings_importers(modules: dict[str, Path]) -> list[str]:
    """Modules below ``prepare`` that import the name ``TrainingSettings`` from anywhere."""
    found = []
    for module, path in modules.items():
        if unit(module) not in BELOW_PREPARE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = node.names if isinstance(node, ast.ImportFrom) else []
            if any(alias.name == "TrainingSettings" for alias in names):
                found.append(module)
    return sorted(set(found))


def test_nothing_below_prepare_imports_the_flat_settings(tmp_path: Path) -> None:
    """training/, launch/, planner/ and the rest take their own sections: TrainingSettings,
    the public surface, stops at prepare (the scan itself: a function-local import is seen)."""
    assert {"training", "launch", "planner", "topology", "rundir"} <= BELOW_PREPARE
    assert settings_importers(module_names()) == []
    sneaky = tmp_path / "loop.py"
    sneaky.write_text("def f():\n    from ..config import TrainingSettings\n")
    assert settings_importers({f"{PACKAGE}.training.loop": sneaky}) == [f"{PACKAGE}.training.loop"]
