"""Staged runs: the recipes that chain training, evaluation and reporting.

    recipe_source  where a recipe comes from (built-in name or YAML), its kind, override merging
    staged_run     StagedRun: stages in order, each marked done and skipped on rerun
    method         the method's pipeline (corpus → DINO → C-DINO → DLG-LC rounds → report), and studies
    study          a recipe with ``seeds:``: per-arm spread and paired claims
    report         results.json and report.md of the method's pipeline
    adapt          a ``kind: adapt`` recipe: a model adapted to an unlabelled target domain
    run            the one dispatcher: ``run_recipe`` by recipe kind, ``run_demo``
"""
