"""Where a recipe comes from and how its sections combine.

A recipe is a YAML file or the name of a built-in one (``cdino/recipes/<name>.yaml``). Its
top-level ``kind`` says which staged run reads it (:data:`KINDS`); a recipe without one is
the method's pipeline. Stage sections are overrides of the training defaults, merged key by
key with :func:`merge_overrides`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cdino.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
KINDS = ("pipeline", "adapt")  # pipeline: cdino.pipeline.method; adapt: cdino.pipeline.adapt


def builtin_recipe(name: str) -> Path:
    """The YAML file of a built-in recipe; an unknown name is a ConfigError listing them."""
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no built-in recipe '{name}' (have: "
                          f"{', '.join(sorted(p.stem for p in RECIPES_DIR.glob('*.yaml')))})")
    return path


def resolve_recipe(source: str | Path) -> Path:
    """A recipe path: ``source`` itself when it is a file or names a YAML file, else the
    built-in recipe of that name."""
    path = Path(source)
    if not path.is_file() and not str(source).endswith((".yaml", ".yml")):
        path = builtin_recipe(str(source))
    return path


def recipe_kind(source: str | Path) -> str:
    """The recipe's top-level ``kind`` (``pipeline`` when absent). A file that cannot be
    read is left to the loader of the method's pipeline, which names what is wrong."""
    try:
        data = yaml.safe_load(resolve_recipe(source).read_text())
    except (ConfigError, OSError, yaml.YAMLError):
        return "pipeline"
    kind = data.get("kind", "pipeline") if isinstance(data, dict) else "pipeline"
    if kind not in KINDS:
        raise ConfigError(f"{source}: kind: unknown recipe kind '{kind}' (known: {', '.join(KINDS)})")
    return kind


def merge_overrides(*dicts: dict | None) -> dict:
    """Nested dictionaries merged left to right: a later mapping's keys replace earlier
    ones, mappings under the same key merge recursively."""
    out: dict = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = merge_overrides(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
