"""An exclusive lock on a file: one process at a time runs a block, the others wait for it.

Used where separate processes (not ranks of one job) may start the same piece of work at
once, e.g. several ``cdino run ablations --set seeds=[S]`` sharing one study folder and its
corpus. The lock is ``fcntl.flock`` on ``path`` (created if missing, never removed): the
operating system releases it when its holder exits, so a killed process leaves no stale
lock. It imports nothing from cdino, so every layer may use it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, waiting for any other holder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
