"""cdino.lock: one process at a time runs the locked block; the others wait for it."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from cdino.lock import exclusive


def _hold(lock: str, log: str, held, seconds: float) -> None:
    with exclusive(lock):
        with open(log, "a") as f:
            f.write("first start\n")
        held.set()
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write("first end\n")


def test_a_second_process_waits_for_the_holder(tmp_path):
    lock, log = tmp_path / "sub" / "x.lock", tmp_path / "log"
    ctx = mp.get_context("spawn")
    held = ctx.Event()
    first = ctx.Process(target=_hold, args=(str(lock), str(log), held, 1.0))
    first.start()
    try:
        assert held.wait(60), "the first process never took the lock"
        with exclusive(lock):  # waits until the first process leaves its block
            with open(log, "a") as f:
                f.write("second\n")
    finally:
        first.join(60)
    assert log.read_text().splitlines() == ["first start", "first end", "second"]
    assert lock.is_file()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock, log = tmp_path / "x.lock", tmp_path / "log"
    ctx = mp.get_context("spawn")
    held = ctx.Event()
    first = ctx.Process(target=_hold, args=(str(lock), str(log), held, 600.0))
    first.start()
    assert held.wait(60), "the first process never took the lock"
    first.kill()
    first.join(60)
    t0 = time.perf_counter()
    with exclusive(lock):
        pass
    assert time.perf_counter() - t0 < 30
    assert Path(log).read_text().splitlines() == ["first start"]


def test_the_lock_can_be_taken_again_after_release(tmp_path):
    lock = tmp_path / "x.lock"
    for _ in range(2):
        with exclusive(lock):
            pass
