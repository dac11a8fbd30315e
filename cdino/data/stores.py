"""Waveform stores: random access to the training utterances' audio.

    MemoryStore  every waveform decoded once into one int16 array (small corpora)
    FileStore    crops read from the audio files on demand, lengths from ``utt2dur``
    ShardStore   crops read from tar shards (one ``pread`` and a flac decode)

:func:`open_store` picks one from the data config. Files known to be bad at start are
skipped and listed; ``read`` raises :class:`AudioError` for one that fails later, and the
datasets (:mod:`cdino.data.loader`) replace it by another utterance.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cdino.console import progress_bar
from cdino.data.audio import SAMPLE_RATE, SkippedFiles, decode_audio, load_audio, probe_lengths
from cdino.data.kaldi_dir import DataDir, write_utt2dur
from cdino.data.shard_index import LIST_NAME
from cdino.distributed import shared_by_rank0
from cdino.errors import AudioError, DataError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass
class DataConfig:
    """How training audio is held and cut."""

    store: Literal["memory", "files"] = "files"  # files: crops read from the audio files (or tar shards) on demand, lengths from utt2dur; memory: decode everything once (small corpora)
    min_seconds: float = 0.5  # utterances shorter than this are skipped (counted) when loading
    num_workers: int = -1  # DataLoader worker processes per rank (they live for the whole run); -1: auto, none on a CPU, on CUDA the cores per rank less one, at most 8 (cdino.train.trainer.loader_workers)


class WaveStore:
    """Random access to the training utterances' waveforms.

    ``read`` raises :class:`AudioError` (its message starting with ``name(i)``) when the
    audio cannot be read; the datasets replace such an utterance by another one.
    """

    utts: list[str]
    skipped: SkippedFiles

    def __len__(self) -> int:
        return len(self.utts)

    def num_samples(self, i: int) -> int:
        raise NotImplementedError

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        raise NotImplementedError

    def name(self, i: int) -> str:
        """Where utterance ``i`` comes from (a path), for messages and skip lists."""
        return self.utts[i]


class PackedStrings(Sequence):
    """A read-only list of strings kept in one bytes buffer.

    A million Python strings touched by data-loader workers are copied into every worker
    (reference counts write to their pages); one buffer and an offset array are not.
    """

    def __init__(self, strings: Sequence[str]) -> None:
        self._blob = "\n".join(strings).encode("utf-8")
        cuts = np.flatnonzero(np.frombuffer(self._blob, dtype=np.uint8) == 10)
        self._starts = np.concatenate([[0], cuts + 1]).astype(np.int64)
        self._ends = np.concatenate([cuts, [len(self._blob)]]).astype(np.int64)
        if not len(strings):
            self._starts = self._ends = np.zeros(0, dtype=np.int64)
        elif len(self._starts) != len(strings):
            raise ValueError("strings must not contain newlines")

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._blob[self._starts[i]:self._ends[i]].decode("utf-8")


class MemoryStore(WaveStore):
    """All waveforms decoded once into one int16 array (fast crops, small corpora)."""

    def __init__(self, data: DataDir, min_seconds: float = 0.5, progress: bool = True,
                 skipped: SkippedFiles | None = None) -> None:
        self.skipped = skipped if skipped is not None else SkippedFiles()
        min_samples = max(1, int(min_seconds * SAMPLE_RATE))
        if data.shards is not None:  # decode a shard folder through its store
            source = ShardStore(data, min_seconds=min_seconds, progress=False, skipped=self.skipped)
            items = [(source.utts[i], source.name(i), lambda i=i: source.read(i, 0, source.num_samples(i)))
                     for i in range(len(source))]
        else:
            items = [(u, data.wav[u], lambda p=data.wav[u]: load_audio(p, min_samples=min_samples))
                     for u in data.utts]
        chunks, lengths, utts = [], [], []
        for utt, path, read in progress_bar(items, desc=f"loading {data.root.name}", show=progress,
                                            unit="utt", leave=False):
            try:
                wave = read()
            except AudioError as exc:
                self.skipped.add(path, str(exc).removeprefix(f"{path}: "))
                continue
            # x / 32768 is what 16-bit audio reads as: this is lossless for 16-bit files
            chunks.append(np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16))
            lengths.append(len(wave))
            utts.append(utt)
        if not utts:
            raise DataError(f"{data.root}: no usable audio ({self.skipped.summary()})")
        self.utts = utts
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.samples = np.concatenate(chunks)
        self.samples.flags.writeable = False  # shared by the stages that open this folder

    def num_samples(self, i: int) -> int:
        return int(self.lengths[i])

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        start = self.offsets[i] + offset
        stop = self.offsets[i] + min(self.lengths[i], offset + n)
        return self.samples[start:stop].astype(np.float32) / 32768.0


def utterance_lengths(data: DataDir, *, progress: bool = False, cache: bool = True
                      ) -> tuple[np.ndarray, dict[int, str]]:
    """Length in samples of every utterance of ``data`` (in order) and the reasons of those
    that cannot be read (by position; their length is 0).

    Lengths come from the folder's ``utt2dur``. Utterances it lacks are measured from
    their file headers, once, in parallel, on rank 0 (the others receive the result),
    and with ``cache`` the completed ``utt2dur`` is written back into the folder,
    atomically; a folder that cannot be written keeps the lengths in memory (warning).
    """
    utts = data.utts
    durs = data.utt2dur or {}
    if len(durs) == len(utts):
        secs = np.fromiter((durs[u] for u in utts), dtype=np.float64, count=len(utts))
        missing: list[int] = []
    else:
        secs = np.fromiter((durs.get(u, -1.0) for u in utts), dtype=np.float64, count=len(utts))
        missing = np.flatnonzero(secs < 0).tolist()
    lengths = np.rint(secs * SAMPLE_RATE).astype(np.int64)

    def measure() -> dict[str, int | str]:
        if not missing:
            return {}
        found = probe_lengths([data.wav[utts[i]] for i in missing], progress=progress,
                              desc=f"reading audio headers of {data.root.name}")
        out = {utts[i]: (n if isinstance(n, int) else str(n)) for i, n in zip(missing, found)}
        if cache and any(isinstance(n, int) for n in out.values()):  # something new to keep
            _cache_utt2dur(data, durs, out)
        return out

    measured = shared_by_rank0(measure)
    bad: dict[int, str] = {}
    if missing:
        got = dict(measured)
        local = [i for i in missing if utts[i] not in got]  # not seen by rank 0 (unlikely)
        if local:
            got.update({utts[i]: (n if isinstance(n, int) else str(n)) for i, n in
                        zip(local, probe_lengths([data.wav[utts[i]] for i in local]))})
        merged = dict(durs)
        for i in missing:
            n = got[utts[i]]
            if isinstance(n, str):
                path = data.wav[utts[i]]
                bad[i] = n.removeprefix(f"{path}: ")
                lengths[i] = 0
            else:
                lengths[i] = n
                merged[utts[i]] = n / SAMPLE_RATE
        data.utt2dur = {u: merged[u] for u in utts if u in merged}
    return lengths, bad


def _cache_utt2dur(data: DataDir, known: dict[str, float], measured: dict[str, int | str]) -> None:
    """Write the folder's utt2dur with the measured lengths added (readable files only)."""
    durs = {}
    for u in data.utts:
        if u in known:
            durs[u] = known[u]
        elif isinstance(measured.get(u), int):
            durs[u] = measured[u] / SAMPLE_RATE
    path = data.root / "utt2dur"
    try:
        write_utt2dur(path, durs)
    except OSError as exc:
        log.warning("%s: cannot write the utterance lengths (%s); they are kept in memory "
                    "and measured again next time", path, exc.strerror or exc)


#: Samples a file may fall short of its utt2dur length (rounded durations) before it is bad.
LENGTH_TOLERANCE = 160


class FileStore(WaveStore):
    """Crops read from the audio files on demand (large corpora).

    Utterance lengths come from ``utt2dur`` (see :func:`utterance_lengths`: measured once
    and cached when missing), so start-up reads no audio header. Unreadable (as far as
    known at start) and too short files are skipped and listed in ``skipped``; a file
    that fails later raises ``AudioError`` from :meth:`read`.
    """

    def __init__(self, data: DataDir, min_seconds: float = 0.5, progress: bool = True,
                 skipped: SkippedFiles | None = None, *, cache: bool = True) -> None:
        self.skipped = skipped if skipped is not None else SkippedFiles()
        min_samples = int(min_seconds * SAMPLE_RATE)
        lengths, bad = utterance_lengths(data, progress=progress, cache=cache)
        keep = lengths >= max(1, min_samples)
        for i in np.flatnonzero(~keep).tolist():
            path = data.wav[data.utts[i]]
            self.skipped.add(path, bad[i] if i in bad else f"too short: {int(lengths[i])} samples")
        if not keep.any():
            raise DataError(f"{data.root}: no usable audio ({self.skipped.summary()})")
        if keep.all():
            self.utts = list(data.utts)
        else:
            self.utts = [u for u, k in zip(data.utts, keep.tolist()) if k]
        self.paths = PackedStrings([data.wav[u] for u in self.utts])
        self.lengths = lengths[keep]

    def num_samples(self, i: int) -> int:
        return int(self.lengths[i])

    def name(self, i: int) -> str:
        return self.paths[i]

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        path = self.paths[i]
        wave = load_audio(path, offset=offset, frames=n)
        expected = min(n, int(self.lengths[i]) - offset)
        if len(wave) < expected - LENGTH_TOLERANCE:
            raise AudioError(f"{path}: shorter than its length in utt2dur ({offset + len(wave)} "
                             f"< {int(self.lengths[i])} samples); was it changed? delete utt2dur "
                             "to measure the files again")
        return wave


class _Names(Sequence):
    def __init__(self, store: ShardStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i):
        return self.store.name(i)


class ShardStore(WaveStore):
    """Crops read from tar shards: a ``pread`` of the utterance's flac member and a decode
    (random access, so the trainer's sampler, ranks and resume work as with files).

    Members left out when indexing and utterances shorter than ``min_seconds`` are
    listed in ``skipped``; a member that fails later raises ``AudioError`` from ``read``.
    Each process keeps at most ``max_open`` shards open.
    """

    def __init__(self, data: DataDir | PathLike, min_seconds: float = 0.5, progress: bool = True,
                 skipped: SkippedFiles | None = None, *, max_open: int = 64) -> None:
        if not isinstance(data, DataDir):
            data = DataDir.load(data)
        index = data.shards
        if index is None:
            raise DataError(f"{data.root}: not a shard folder (no {LIST_NAME})")
        self.skipped = skipped if skipped is not None else SkippedFiles()
        for name, reason in index.skipped:
            self.skipped.add(name, reason)
        if data.utts is index.utts:
            rows = np.arange(len(index), dtype=np.int64)
        else:
            pos = {u: i for i, u in enumerate(index.utts)}
            rows = np.array([pos[u] for u in data.utts], dtype=np.int64)
        samples = index.samples[rows]
        keep = samples >= max(1, int(min_seconds * SAMPLE_RATE))
        for r in rows[~keep].tolist():
            self.skipped.add(f"{index.shards[index.shard[r]]}:{index.utts[r]}",
                             f"too short: {int(index.samples[r])} samples")
        rows = rows[keep]
        if not len(rows):
            raise DataError(f"{data.root}: no usable audio ({self.skipped.summary()})")
        self.utts = index.utts if len(rows) == len(index) else [index.utts[r] for r in rows.tolist()]
        self.shard_paths = [str(p) for p in index.shards]
        self.lengths = samples[keep]
        self._shard, self._offset, self._size = index.shard[rows], index.offset[rows], index.size[rows]
        self.max_open = max_open
        self._fds: OrderedDict[int, int] = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = OrderedDict()  # descriptors do not travel to another process
        return state

    def num_samples(self, i: int) -> int:
        return int(self.lengths[i])

    def name(self, i: int) -> str:
        return f"{self.shard_paths[self._shard[i]]}:{self.utts[i]}"

    @property
    def paths(self) -> Sequence[str]:
        return _Names(self)

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        fd = os.open(self.shard_paths[shard], os.O_RDONLY)
        self._fds[shard] = fd
        while len(self._fds) > self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def member_bytes(self, i: int) -> bytes:
        """The raw bytes of utterance ``i``'s flac member."""
        size, offset = int(self._size[i]), int(self._offset[i])
        try:
            data = os.pread(self._fd(int(self._shard[i])), size, offset)
        except OSError as exc:
            raise AudioError(f"{self.name(i)}: cannot read the shard ({exc.strerror or exc})") from None
        if len(data) != size:
            raise AudioError(f"{self.name(i)}: truncated shard ({len(data)} of {size} bytes)")
        return data

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        return decode_audio(self.member_bytes(i), name=self.name(i), offset=offset, frames=n)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


#: The last memory store opened in this process and what it was decoded from: the stages of
#: a pipeline train on the same folder one after the other, and decode it once.
_last_memory_store: tuple[tuple, MemoryStore] | None = None


def _memory_store_key(data: DataDir, min_seconds: float) -> tuple:
    """What a memory store's contents depend on: the folder's utterances, their files'
    sizes and modification times, and the minimum length."""
    files = []
    for u in data.utts:
        path = data.wav[u]
        try:
            st = os.stat(path)
            files.append((u, path, st.st_size, st.st_mtime_ns))
        except OSError:  # a missing file: skipped when decoded, so part of the key as such
            files.append((u, path, None, None))
    return (str(data.root.resolve()), float(min_seconds), tuple(files))


def open_store(data: DataDir, cfg: DataConfig, progress: bool = True) -> WaveStore:
    """The training store of ``cfg.store``; a shard folder is read from its tar shards
    (``files``) or decoded from them into memory (``memory``). A memory store of a data
    folder whose files have not changed since the last one this process opened is that
    store again (its waveforms are read-only)."""
    global _last_memory_store
    if cfg.store == "memory" and data.shards is None:
        key = _memory_store_key(data, cfg.min_seconds)
        if _last_memory_store is not None and _last_memory_store[0] == key:
            return _last_memory_store[1]
        _last_memory_store = None  # not two stores in memory at once
        store = MemoryStore(data, min_seconds=cfg.min_seconds, progress=progress)
        _last_memory_store = (key, store)
        return store
    if cfg.store == "memory":
        return MemoryStore(data, min_seconds=cfg.min_seconds, progress=progress)
    if data.shards is not None:
        return ShardStore(data, min_seconds=cfg.min_seconds, progress=progress)
    return FileStore(data, min_seconds=cfg.min_seconds, progress=progress)
