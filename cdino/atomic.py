"""Atomic file writes: every file cdino writes appears whole or not at all.

A file is written under a temporary name beside its target, ``.<name>.tmp-<pid>``, and
renamed over the target when it is complete (``os.replace``, atomic on one file system).
An error or an interrupt before the rename leaves the previous file intact and removes the
temporary one. The name carries the process id, so ranks or data-loader workers that write
the same file at once never share a temporary file. A process killed outright can leave a
temporary file behind; :func:`leftovers` finds them.

This module is the only implementation of the pattern. It imports nothing from cdino, so
every layer may use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

PathLike = str | os.PathLike

#: Globs that match this module's temporary files and set-aside folders.
TEMP_GLOBS = (".*.tmp-*", ".*.old-*")


def temp_path(path: PathLike) -> Path:
    """The temporary name :func:`replacing` writes ``path`` under (hidden, unique per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def file_mode() -> int:
    """The mode ``open`` gives a new file, ``0o666 & ~umask`` (0644 under the usual umask):
    for files that a library writes with narrower modes (safetensors writes 0600). The
    umask is read from ``/proc`` where it can be, so it is never changed."""
    mask = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                mask = int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def leftovers(folder: PathLike) -> list[Path]:
    """Temporary files or folders in ``folder`` left by writes that did not finish."""
    return sorted({p for pattern in TEMP_GLOBS for p in Path(folder).glob(pattern)})


@contextmanager
def replacing(path: PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends without an
    error it is renamed over ``path`` (flushed to disk first with ``durable``). On an error
    the temporary file is removed and ``path`` is left as it was. The parent folder is
    created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with suppress(OSError):  # gone after the rename; a folder in its way is not ours
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", *, durable: bool = False) -> Iterator[IO[Any]]:
    """``open`` for writing (``"w"`` as UTF-8 text, ``"wb"`` binary) through :func:`replacing`."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    with replacing(path, durable=durable) as tmp:
        with open(tmp, mode, encoding=None if mode == "wb" else "utf-8") as f:
            yield f


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_lines(path: PathLike, lines: Iterable[str]) -> None:
    """Write ``lines`` to ``path`` atomically, each followed by a newline."""
    with atomic_open(path) as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def write_bytes(path: PathLike, data: bytes | memoryview, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)


def save_npy(path: PathLike, array: Any) -> None:
    """Save a NumPy array as ``.npy`` atomically (no pickled objects)."""
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


@contextmanager
def replacing_folder(path: PathLike) -> Iterator[Path]:
    """Yield a fresh, empty temporary folder beside ``path`` to fill; when the block ends
    without an error it takes the place of ``path``. An existing ``path`` is first moved
    aside and removed only after the new folder is in place, so a reader sees the old
    folder or the new one, whole (a kill between the two renames leaves the old one
    under a temporary name, found by :func:`leftovers`). On an error the temporary folder
    is removed and ``path`` is left as it was."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_folder(src: PathLike, dst: PathLike) -> Path:
    """Copy the folder ``src`` to ``dst`` through :func:`replacing_folder` (``dst`` is
    replaced whole); returns ``dst``."""
    import shutil

    with replacing_folder(dst) as tmp:
        tmp.rmdir()
        shutil.copytree(src, tmp)
    return Path(dst)
