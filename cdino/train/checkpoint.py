"""Atomic checkpoints, resumption and checkpoint averaging.

A checkpoint is a ``torch.save`` dict of tensors and plain values only, so it loads
with ``weights_only=True`` (no code runs when reading it). It is written to a temporary
file in the same folder, flushed to disk, then renamed over its final name: a kill at
any moment leaves either the old or the new file, never a half-written one. Files are
named ``step-00001234.pt``; the newest readable one is the one a run resumes from.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import torch

from cdino.atomic import atomic_open
from cdino.errors import ModelFormatError, TrainingError
from cdino.testing.faults import fault_point

_NAME = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (disk full, folder gone): the run stops cleanly."""


def atomic_torch_save(obj: dict, path: Path) -> None:
    """``torch.save`` through :func:`cdino.atomic.atomic_open`, flushed to disk before the
    rename; a failed write raises :class:`CheckpointWriteError` and keeps the old file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    try:
        with atomic_open(path, "wb", durable=True) as f:
            f.write(data[: len(data) // 2])
            f.flush()
            fault_point("checkpoint_write")
            f.write(data[len(data) // 2:])
    except OSError as exc:
        raise CheckpointWriteError(f"{path}: cannot write checkpoint ({exc.strerror or exc}); "
                                   "the previous checkpoint is intact") from None


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in a folder, oldest first (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # corrupt, truncated or carrying code
        raise ModelFormatError(f"{path}: unreadable checkpoint ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def latest_checkpoint(folder: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; an unreadable newest one falls back to the previous."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except ModelFormatError:
            continue
    return None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints (and any temporary files of dead writers go)."""
    for _, path in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
    for p in Path(folder).glob(".step-*.pt.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid():
            p.unlink(missing_ok=True)


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors; integer buffers (BN counters) from the last."""
    if not states:
        raise ValueError("no state dicts to average")
    out = {}
    for key, last in states[-1].items():
        if torch.is_floating_point(last):
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out
