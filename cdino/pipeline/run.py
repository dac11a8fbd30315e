"""The one entry to staged runs: ``cdino run RECIPE`` and ``cdino demo``.

A recipe's ``kind`` picks its staged run (:func:`cdino.pipeline.recipe_source.recipe_kind`):
``pipeline`` (the default) is the method's pipeline, or a study when it has ``seeds:``;
``adapt`` is the domain-adaptation pipeline.
"""

from __future__ import annotations

from pathlib import Path

from cdino.pipeline.recipe_source import builtin_recipe, recipe_kind


def run_recipe(source, out: Path, from_stage: str | None = None, overrides=()) -> dict:
    """Load the recipe ``source`` (a YAML file or a built-in name) strictly, with
    ``KEY=VALUE`` overrides, and run it into ``out``; returns its results (``{}`` on
    ranks other than 0)."""
    if recipe_kind(source) == "adapt":
        from cdino.pipeline.adapt import AdaptPipeline, load_adapt_recipe

        return AdaptPipeline(load_adapt_recipe(source, overrides), Path(out)).run(from_stage)
    from cdino.pipeline.method import MethodPipeline, load_recipe

    return MethodPipeline(load_recipe(source, overrides), Path(out)).run(from_stage)


def run_demo(out: Path, quick: bool = False, from_stage: str | None = None) -> dict:
    """``cdino demo``: the built-in recipe on the simulated corpus (generated on first use)."""
    return run_recipe(builtin_recipe("quick" if quick else "demo"), out, from_stage)
