"""The package's layers: a module imports only from its own layer or those below it.

    base     allocator, atomic, lock, errors, config, console, metrics, threads, testing, distributed
    data     data, corpus
    features frontend, models
    methods  methods, pseudo, eval
    train    train
    api      api (the user's Python API)
    verbs    verbs (what the CLI verbs run)
    pipeline pipeline (staged runs: the method's pipeline, studies, adaptation, reports)
    cli      cli

Imports inside functions count as much as those at the top of a module, and no two
modules import each other, directly or through others (no import cycle).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import cdino

PACKAGE = Path(cdino.__file__).parent
LAYERS = [
    {"", "allocator", "atomic", "lock", "errors", "config", "console", "metrics", "threads", "testing",
     "distributed"},
    {"data", "corpus"},
    {"frontend", "models"},
    {"methods", "pseudo", "eval"},
    {"train"},
    {"api"},
    {"verbs"},
    {"pipeline"},
    {"cli"},
]


def _unit(dotted: str) -> str:
    """The part of cdino a dotted module name belongs to ('' for the package root)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for i, members in enumerate(LAYERS):
        if unit in members:
            return i
    raise AssertionError(f"cdino.{unit} is in no layer: add it to LAYERS in {__file__}")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every cdino import in a file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cdino":
                found += [(node.lineno, f"cdino.{a.name}") for a in node.names]
            elif node.module.startswith("cdino."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("cdino.")]
    return found


def _module_unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return "" if rel.name == "__init__.py" and len(rel.parts) == 1 else rel.parts[0].removesuffix(".py")


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _module_unit(path)
        if unit == "":  # the package root re-exports the user API lazily (cdino.load_model)
            continue
        own = _layer(unit)
        for line, dotted in _imports(path):
            target = _unit(dotted)
            if target and target in {a.name.removesuffix(".py") for a in PACKAGE.iterdir()} \
                    and _layer(target) > own:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {dotted} (a higher layer)")
            elif target == "" and dotted != "cdino.__version__":
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {dotted} from the package root")
    return bad


def test_no_module_imports_a_higher_layer():
    assert _violations() == []


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Module → the cdino modules it imports (``from cdino.data import prepare`` names the
    submodule; a package's ``__init__`` counts only when that is what is imported)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and (node.module == "cdino" or node.module.startswith("cdino.")):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("cdino."))
        graph[name] = {t for t in targets if t in modules and t != name and t != "cdino"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (the
    strongly connected components of more than one module, Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_no_two_modules_import_each_other():
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_catches_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_part_of_the_package_has_a_layer():
    for entry in PACKAGE.iterdir():
        name = entry.name.removesuffix(".py")
        if (entry.suffix == ".py" and name != "__init__") or (entry.is_dir() and (entry / "__init__.py").exists()):
            _layer(name)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    # a data module that reached up to the trainer would be reported with its line
    fake = tmp_path / "cdino"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "bad.py").write_text("import os\n\ndef f():\n    from cdino.train.trainer import Trainer\n")
    (fake / "train").mkdir()
    (fake / "train" / "__init__.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _violations() == ["cdino/data/bad.py:4 imports cdino.train.trainer (a higher layer)"]


@pytest.mark.parametrize("dotted,unit", [("cdino.train.trainer", "train"), ("cdino.atomic", "atomic"),
                                         ("cdino", "")])
def test_unit_of_a_module(dotted, unit):
    assert _unit(dotted) == unit
