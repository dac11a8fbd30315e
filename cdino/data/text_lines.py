"""Reading the line-based text files of data folders, with errors that name the file and line."""

from __future__ import annotations

import os
from pathlib import Path

from cdino.errors import DataError

PathLike = str | os.PathLike


def read_text_lines(path: PathLike, what: str) -> list[str]:
    """The lines of a UTF-8 text file; unreadable or binary → DataError naming the line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: not found" if path.name == what else
                        f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a {what} file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (is this really a {what} file?)") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"{path}:{line}: binary data (is this really a {what} file?)")
    return text.splitlines()
