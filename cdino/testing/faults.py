"""Fault injection: kill a run at named points or at random times, then resume it.

Named points are compiled into the code paths that must survive a kill:

    checkpoint_write   half-way through writing a checkpoint's temporary file
    clustering         after k-means, before its labels are used or saved
    extraction         after the first batch of an embedding pass

    step               after an optimiser step (N-th step of this process)

``CDINO_FAULT=point:N`` makes the process SIGKILL itself the N-th time it reaches
``point`` (once per process); ``point:N@R`` kills only rank R of a ``torchrun`` job.
With ``CDINO_FAULT_ONCE=FILE`` the fault fires only while FILE does not exist (it is
created), so a job restarted by ``torchrun --max-restarts`` runs on. Without the
variable a fault point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

_hits: Counter = Counter()


def fault_point(name: str) -> None:
    spec = os.environ.get("CDINO_FAULT")
    if not spec:
        return
    spec, _, rank = spec.partition("@")
    point, _, nth = spec.partition(":")
    if point != name or (rank and rank != os.environ.get("RANK", "0")):
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        mark = os.environ.get("CDINO_FAULT_ONCE")
        if mark:  # fire once across restarts (torchrun --max-restarts starts new processes)
            try:
                fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def train_command(method: str, data, out, config, init=None) -> list[str]:
    """``cdino train ... --resume`` as a subprocess command: every restart continues."""
    cmd = [sys.executable, "-m", "cdino.cli", "train", "--method", method, "--data", str(data),
           "--out", str(out), "--config", str(config), "--resume"]
    return cmd + (["--init", str(init)] if init else [])


def same_encoder_weights(a: Path, b: Path) -> bool:
    """True when two model folders hold bit-identical encoder weights."""
    import numpy as np
    from safetensors.numpy import load_file

    wa, wb = load_file(str(Path(a) / "encoder.safetensors")), load_file(str(Path(b) / "encoder.safetensors"))
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def run_until_done(cmd: list[str], faults: list[str], random_kills: int, rng, delay: tuple[float, float],
                   env: dict | None = None, timeout: float = 600.0) -> dict:
    """Run ``cmd`` (which must resume by itself) through injected faults to completion.

    First one run per named fault (``CDINO_FAULT`` set), then ``random_kills`` runs killed
    with SIGKILL after a random delay, then a final run that must exit 0.
    Returns counts of kills, and of runs that died at their injected point.
    """
    base = dict(env or os.environ)
    stats = {"named_kills": 0, "random_kills": 0, "finished_early": 0, "runs": 0}
    for fault in faults:
        proc = subprocess.run(cmd, env={**base, "CDINO_FAULT": fault}, capture_output=True, text=True,
                              timeout=timeout)
        stats["runs"] += 1
        if proc.returncode == -signal.SIGKILL:
            stats["named_kills"] += 1
        elif proc.returncode != 0:
            raise RuntimeError(f"run with {fault} failed: {proc.stderr[-2000:]}")
        else:
            stats["finished_early"] += 1
    for _ in range(random_kills):
        proc = subprocess.Popen(cmd, env=base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stats["runs"] += 1
        try:
            proc.wait(timeout=float(rng.uniform(*delay)))
            if proc.returncode != 0:
                raise RuntimeError(f"run failed: {proc.stderr.read()[-2000:]}")
            stats["finished_early"] += 1
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stats["random_kills"] += 1
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=base, capture_output=True, text=True, timeout=timeout)
    stats["runs"] += 1
    if proc.returncode != 0:
        raise RuntimeError(f"final run failed: {proc.stderr[-2000:]}")
    stats["final_seconds"] = time.perf_counter() - t0
    return stats
