"""The shard folder format: ``shards.list``, ``shards.index`` and the tar members.

A shard folder (``cdino prepare shards``, :mod:`cdino.data.shards`) holds tar files whose
members are ``<key>.json`` (``{"utt": id, "spk": speaker or null}``) and ``<key>.flac``
(16-bit, 16 kHz; ``key`` is the utterance id percent-encoded so it holds no ``/``), the list
of those tars (``shards.list``) and an index (``shards.index``): where each utterance's flac
lies in its tar and how many samples it holds. This module reads and checks that format;
an index missing or out of date is rebuilt once from the tar headers and cached.
:meth:`cdino.data.kaldi_dir.DataDir.load` reads a shard folder through it, and
:class:`cdino.data.stores.ShardStore` reads crops with it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from cdino.atomic import atomic_open
from cdino.console import progress_bar
from cdino.data.audio import SAMPLE_RATE, decode_audio
from cdino.data.text_lines import read_text_lines
from cdino.distributed import shared_by_rank0
from cdino.errors import AudioError, DataError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

LIST_NAME = "shards.list"  # the list of tar shards that marks a shard folder
INDEX_NAME = "shards.index"
_INDEX_HEADER = "#cdino-shard-index\t1"
SHARD_NAME = re.compile(r"^shard-\d{6}\.tar$")  # shard-000000.tar ...
_BLOCK = 512


def shard_key(utt: str) -> str:
    """The member name stem of an utterance: its id with ``/`` and ``%`` percent-encoded."""
    return quote(utt, safe="-_.~+=,@:")


def utt_of_key(key: str) -> str:
    """Inverse of :func:`shard_key`."""
    return unquote(key)


@dataclass
class ShardIndex:
    """Where every utterance of a shard folder lies: shard number, byte offset and size of
    its flac member, length in samples (16 kHz) and speaker (``""``: none)."""

    list_path: Path
    shards: list[Path]
    utts: list[str]
    spks: list[str]
    shard: np.ndarray  # int32 (n,)
    offset: np.ndarray  # int64 (n,)
    size: np.ndarray  # int64 (n,)
    samples: np.ndarray  # int64 (n,)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # members left out when indexing

    def __len__(self) -> int:
        return len(self.utts)


def write_index(path: Path, shards: Sequence[Path], rows: Iterator[tuple], skipped: Sequence[tuple[str, str]]) -> None:
    """``shards.index``: header, ``#shard name bytes`` and ``#skip member reason`` lines,
    then ``utt shard offset size samples spk`` (tab-separated), atomically."""
    with atomic_open(path) as f:
        f.write(_INDEX_HEADER + "\n")
        for p in shards:
            f.write(f"#shard\t{p.name}\t{os.path.getsize(p)}\n")
        for name, reason in skipped:
            f.write(f"#skip\t{name}\t{' '.join(reason.split())}\n")
        for utt, spk, shard, offset, size, samples in rows:
            f.write(f"{utt}\t{shard}\t{offset}\t{size}\t{samples}\t{spk or ''}\n")


def _read_index(list_path: Path, shards: list[Path]) -> ShardIndex | None:
    """The cached index when it exists and matches the listed shards (names and byte
    sizes); ``None`` otherwise (it is then rebuilt). A malformed line → DataError."""
    path = list_path.parent / INDEX_NAME
    if not path.is_file():
        return None
    lines = read_text_lines(path, INDEX_NAME)
    if not lines or lines[0] != _INDEX_HEADER:
        return None
    want = [(p.name, os.path.getsize(p)) for p in shards]
    have, skipped = [], []
    utts, spks, cols = [], [], []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if parts[0] == "#shard" and len(parts) == 3 and parts[2].isdigit():
            have.append((parts[1], int(parts[2])))
        elif parts[0] == "#skip" and len(parts) == 3:
            skipped.append((parts[1], parts[2]))
        elif len(parts) == 6 and not parts[0].startswith("#"):
            utts.append(parts[0])
            spks.append(parts[5])
            cols.append(parts[1:5])
        elif line.strip():
            raise DataError(f"{path}:{lineno}: expected 'utt shard offset size samples spk' "
                            "(tab-separated); delete the file to index the shards again")
    if have != want:
        return None  # the shards changed since the index was written
    if not utts:
        raise DataError(f"{path}: no utterances indexed")
    try:
        table = np.array(cols, dtype=np.int64).reshape(-1, 4)
    except ValueError:
        raise DataError(f"{path}: a shard, offset, size or samples field is not a number; "
                        "delete the file to index the shards again") from None
    if table.min() < 0 or table[:, 0].max() >= len(shards):
        raise DataError(f"{path}: shard numbers or offsets out of range; delete the file "
                        "to index the shards again")
    if len(set(utts)) != len(utts):
        raise DataError(f"{path}: an utterance is indexed twice")
    index = ShardIndex(list_path, shards, utts, spks, table[:, 0].astype(np.int32),
                       table[:, 1].copy(), table[:, 2].copy(), table[:, 3].copy(), skipped)
    return index if _headers_agree(index) else None


def _headers_agree(index: ShardIndex) -> bool:
    """Spot check that the tar headers in front of the first, middle and last indexed
    member of every shard name that member with that size (a shard rewritten to the same
    byte size with another layout fails it)."""
    order = np.lexsort((index.offset, index.shard))
    starts = np.searchsorted(index.shard[order], np.arange(len(index.shards) + 1))
    for s, shard in enumerate(index.shards):
        rows = order[starts[s]:starts[s + 1]]
        if not len(rows):
            continue
        with open(shard, "rb") as f:
            for r in {int(rows[0]), int(rows[len(rows) // 2]), int(rows[-1])}:
                offset = int(index.offset[r])
                head = os.pread(f.fileno(), _BLOCK, offset - _BLOCK) if offset >= _BLOCK else b""
                if len(head) < _BLOCK:
                    return False
                name = head[:100].split(b"\0", 1)[0]
                want = f"{shard_key(index.utts[r])}.flac".encode("utf-8")
                try:
                    size = int(head[124:136].split(b"\0", 1)[0].strip() or b"-1", 8)
                except ValueError:
                    return False
                if not name or not want.startswith(name) or len(name) < min(len(want), 99) \
                        or size != int(index.size[r]):
                    return False
    return True


def _flac_length(head: bytes) -> int | None:
    """Samples at 16 kHz from a flac's STREAMINFO (``None`` when it cannot tell)."""
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    si = head[8:42]
    rate = (si[10] << 12) | (si[11] << 4) | (si[12] >> 4)
    total = ((si[13] & 0x0F) << 32) | int.from_bytes(si[14:18], "big")
    if rate == 0 or total == 0:
        return None
    return int(round(total * SAMPLE_RATE / rate))


def _scan_shard(shard: Path, number: int, skipped: list[tuple[str, str]]) -> list[tuple]:
    """Index rows of one tar from its headers (members grouped by ``<key>.<suffix>``)."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    tar_error = None
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                stem, _, suffix = info.name.rpartition(".")
                if not stem:
                    skipped.append((f"{shard}:{info.name}", "member name without <key>.<suffix>"))
                    continue
                members.setdefault(stem, {})[suffix] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        tar_error = (str(shard), f"unreadable tar, rest of shard skipped ({exc or type(exc).__name__})")
    rows = []
    end = os.path.getsize(shard)
    with open(shard, "rb") as f:
        for stem, have in members.items():
            where = f"{shard}:{stem}"
            if "json" not in have or "flac" not in have:
                got = ", ".join(sorted(have)) or "nothing"
                skipped.append((where, f"incomplete utterance (needs .json and .flac, has {got})"))
                continue
            (j_off, j_size), (a_off, a_size) = have["json"], have["flac"]
            if a_off + a_size > end or j_off + j_size > end:
                skipped.append((where, "truncated: the shard ends inside this utterance"))
                tar_error = None  # this is what the tar error was about
                continue
            try:
                meta = json.loads(os.pread(f.fileno(), j_size, j_off).decode("utf-8"))
                utt, spk = meta["utt"], meta.get("spk")
                if not isinstance(utt, str) or not (spk is None or isinstance(spk, str)):
                    raise TypeError("'utt' must be a string and 'spk' a string or null")
                if not utt or any(c.isspace() for c in utt) or (spk and any(c.isspace() for c in spk)):
                    raise ValueError("utterance and speaker ids must be non-empty without white space")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                skipped.append((where + ".json", f"bad metadata ({exc})"))
                continue
            n = _flac_length(os.pread(f.fileno(), min(a_size, 64), a_off))
            if n is None:  # not a cdino flac header: decode to measure (and to check it)
                try:
                    n = len(decode_audio(os.pread(f.fileno(), a_size, a_off), name=where + ".flac"))
                except AudioError as exc:
                    skipped.append((where + ".flac", str(exc).removeprefix(f"{where}.flac: ")))
                    continue
            rows.append((utt, spk or "", number, a_off, a_size, n))
    if tar_error is not None:
        skipped.append(tar_error)
    return rows


def build_shard_index(list_path: PathLike, progress: bool = False) -> ShardIndex:
    """Index the shards of a list from their tar headers and write ``shards.index``
    beside it (when the folder is writable). Utterance order: shard by shard."""
    list_path = Path(list_path)
    shards = read_shard_list(list_path)
    skipped: list[tuple[str, str]] = []
    rows: list[tuple] = []
    seen: set[str] = set()
    for number, shard in enumerate(progress_bar(shards, desc="indexing shards", unit=" shard",
                                                show=progress, leave=False)):
        for row in _scan_shard(shard, number, skipped):
            if row[0] in seen:
                skipped.append((f"{shard}:{shard_key(row[0])}", f"utterance '{row[0]}' is in another shard too"))
                continue
            seen.add(row[0])
            rows.append(row)
    if not rows:
        raise DataError(f"{list_path}: no readable utterance in the shards "
                        f"({len(skipped)} members skipped)")
    try:
        write_index(list_path.parent / INDEX_NAME, shards, iter(rows), skipped)
    except OSError as exc:
        log.warning("%s: cannot write the shard index (%s); it is kept in memory",
                    list_path.parent / INDEX_NAME, exc.strerror or exc)
    cols = np.array([r[2:] for r in rows], dtype=np.int64).reshape(-1, 4)
    return ShardIndex(list_path, shards, [r[0] for r in rows], [r[1] for r in rows],
                      cols[:, 0].astype(np.int32), cols[:, 1].copy(), cols[:, 2].copy(),
                      cols[:, 3].copy(), skipped)


def load_shard_index(list_path: PathLike, progress: bool = False) -> ShardIndex:
    """The index of a ``shards.list``: the cached ``shards.index`` when it matches the
    shards, else built from the tar headers (on rank 0 under torch.distributed; the other
    ranks wait and read it)."""
    list_path = Path(list_path)
    shards = read_shard_list(list_path)
    index = _read_index(list_path, shards)
    if index is not None:
        return index

    built: list[ShardIndex] = []

    def build() -> bool:  # True when the index could be written for the other ranks
        built.append(build_shard_index(list_path, progress=progress))
        return (list_path.parent / INDEX_NAME).is_file()

    if shared_by_rank0(build) and not built:
        index = _read_index(list_path, shards)
    if index is None:
        index = built[0] if built else build_shard_index(list_path, progress=progress)
    return index


class ShardMembers(Mapping):
    """``DataDir.wav`` of a shard folder: utterance → ``<shard>:<utterance>`` (not a file)."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index
        self._row: dict[str, int] | None = None

    def _rows(self) -> dict[str, int]:
        if self._row is None:
            self._row = {u: i for i, u in enumerate(self.index.utts)}
        return self._row

    def __getitem__(self, utt: str) -> str:
        i = self._rows()[utt]
        return f"{self.index.shards[self.index.shard[i]]}:{utt}"

    def __contains__(self, utt) -> bool:
        return utt in self._rows()

    def __iter__(self):
        return iter(self.index.utts)

    def __len__(self) -> int:
        return len(self.index.utts)


def read_shard_list(list_path: PathLike) -> list[Path]:
    """The shards of a ``shards.list`` (paths relative to the list's folder or absolute)."""
    list_path = Path(list_path)
    shards: list[Path] = []
    seen: dict[Path, int] = {}
    for lineno, line in enumerate(read_text_lines(list_path, "shards.list"), 1):
        name = line.strip()
        if not name:
            continue
        path = Path(name) if os.path.isabs(name) else list_path.parent / name
        if path in seen:
            raise DataError(f"{list_path}:{lineno}: shard '{name}' listed twice "
                            f"(first on line {seen[path]})")
        if not path.is_file():
            raise DataError(f"{list_path}:{lineno}: shard '{name}' not found")
        seen[path] = lineno
        shards.append(path)
    if not shards:
        raise DataError(f"{list_path}: no shards listed")
    return shards
