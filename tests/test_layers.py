"""The package's layers: a module imports only from its own layer or those below it.

    base     allocator, atomic, errors, config, console, metrics, threads, testing, distributed
    data     data, corpus
    features frontend, models
    methods  methods, pseudo, eval
    train    train
    top      api, verbs, report, study, recipe, adapt, cli

Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import cdino

PACKAGE = Path(cdino.__file__).parent
LAYERS = [
    {"", "allocator", "atomic", "errors", "config", "console", "metrics", "threads", "testing", "distributed"},
    {"data", "corpus"},
    {"frontend", "models"},
    {"methods", "pseudo", "eval"},
    {"train"},
    {"api", "verbs", "report", "study", "recipe", "adapt", "cli"},
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
