"""StagedRun: a recipe's stages in order, each marked done and skipped on rerun.

Each stage writes into ``out/<stage>/`` and is marked done by ``out/<stage>/done.json``
(written atomically, last). A rerun skips done stages; ``--from STAGE`` removes the markers
from that stage on (and the folders of the stages that train, so they start over); a killed
stage resumes from its own checkpoints. Under ``torchrun`` every rank runs every stage;
rank 0 alone generates the corpus, writes the report and the markers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import yaml

from cdino.atomic import write_text
from cdino.config import to_dict
from cdino.errors import ConfigError


def print_finished(what: str, out: Path, seconds: float, note: str = "") -> None:
    """A staged run's last console lines: its time and report, then the exported model
    folder (``out/model``), the one thing a user needs next."""
    print(f"{what} finished: {seconds:.0f} s in all{note}; see {out / 'report.md'}")
    print(f"model folder: {out / 'model'} (cdino verify --model {out / 'model'} a.wav b.wav)")


class StagedRun:
    """Stages in order into ``out``, each marked done by ``out/<stage>/done.json`` (written
    atomically, last) and skipped on rerun; the recipe pipelines (:class:`cdino.pipeline.method.MethodPipeline`,
    :class:`cdino.pipeline.adapt.AdaptPipeline`) fill in ``stage_<name>`` methods."""

    stages: list[str] = []  # in order; the last one (the report) always runs
    trained: tuple[str, ...] = ()  # stages whose folders are removed by --from (they retrain)

    def __init__(self, recipe, out: Path) -> None:
        self.r = recipe
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        if os.environ.get("RANK", "0") == "0":  # before the process group exists: one writer
            write_text(self.out / "recipe.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False))

    def done(self, stage: str) -> bool:
        return (self.out / stage / "done.json").is_file()

    def mark(self, stage: str, info: dict) -> None:
        write_text(self.out / stage / "done.json", json.dumps(info, indent=1, default=float))

    def stage_info(self, stage: str) -> dict:
        path = self.out / stage / "done.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def reset_from(self, stage: str) -> None:
        if stage not in self.stages:
            raise ConfigError(f"--from: unknown stage '{stage}' (stages: {', '.join(self.stages)})")
        # Markers go, and training outputs of redone stages too, so they retrain from scratch.
        for s in self.stages[self.stages.index(stage):]:
            (self.out / s / "done.json").unlink(missing_ok=True)
            if s in self.trained:
                shutil.rmtree(self.out / s, ignore_errors=True)

    def skip(self, stage: str) -> bool:
        """A stage this recipe does not run at all."""
        return False

    def run_stages(self) -> None:
        """Every stage not done, in order, on every rank (``corpus`` and the last stage, the
        report, on rank 0 only); each marked done by rank 0 when it ends."""
        from cdino.distributed import barrier, is_main

        last = self.stages[-1]
        for stage in self.stages:
            if self.skip(stage):
                continue
            if self.done(stage) and stage != last:
                if is_main():
                    print(f"[{stage}] done, skipped", flush=True)
                continue
            if is_main():
                print(f"[{stage}] running", flush=True)
            t0 = time.perf_counter()
            if stage in ("corpus", last) and not is_main():
                info = {}
            else:
                info = getattr(self, f"stage_{stage}")() or {}
            info.setdefault("seconds", time.perf_counter() - t0)
            if is_main():
                self.mark(stage, info)
            barrier()
