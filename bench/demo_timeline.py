"""Where a finished demo run's wall time went, as one JSON object, from its own files.

For each training stage: seconds from the first to the last line of its ``train.log``
(set-up, steps, per-epoch clustering or loss-gate fits), and the seconds from its last
log line to the next stage's first (export: train-set embeddings, mean and calibration;
the test-trial evaluation; the next stage's start-up). The corpus and total come from
``results.json``.

    python bench/demo_timeline.py /tmp/demoG > bench/results/demo_timeline_1010s.json
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path


def _stages(exp: Path) -> list[str]:
    """The run's training stages in pipeline order, with every round it trained."""
    rounds = lambda name: sorted((p.name for p in (exp / name).glob("round*")),  # noqa: E731
                                 key=lambda r: int(r[5:]) if r[5:].isdigit() else 0)
    return (["dino", "cdino"] + [f"pseudo/{r}" for r in rounds("pseudo")]
            + [f"mm/{r}" for r in rounds("mm")] + ["supervised"])

STEP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) step (\d+) ")


def _time(line: str) -> datetime:
    return datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")


def timeline(exp: Path) -> dict:
    rows = []
    for stage in _stages(exp):
        log = exp / stage / "train.log"
        if not log.is_file():
            continue
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln[:4].isdigit()]
        steps = [int(m.group(2)) for m in map(STEP.match, lines) if m]
        rows.append({"stage": stage, "first": _time(lines[0]), "last": _time(lines[-1]),
                     "steps": max(steps, default=0)})
    out = []
    for i, r in enumerate(rows):
        train = (r["last"] - r["first"]).total_seconds()
        after = (rows[i + 1]["first"] - r["last"]).total_seconds() if i + 1 < len(rows) else None
        out.append({"stage": r["stage"], "train_log_s": train, "steps": r["steps"],
                    "s_per_step": round(train / r["steps"], 3) if r["steps"] else None,
                    "until_next_stage_s": after})
    res = json.loads((exp / "results.json").read_text())
    training = sum(r["train_log_s"] for r in out)
    between = sum(r["until_next_stage_s"] or 0 for r in out)
    return {"bench": "demo_timeline", "exp": str(exp), "total_s": res["seconds"]["total"],
            "corpus_s": res["seconds"].get("corpus"), "training_logs_s": training,
            "between_stages_s": between,
            "rest_s": res["seconds"]["total"] - (res["seconds"].get("corpus") or 0) - training - between,
            "stages": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exp", type=Path, help="a finished `cdino demo --out` folder")
    print(json.dumps(timeline(ap.parse_args().exp), indent=1))


if __name__ == "__main__":
    main()
