"""Tar shards: a data folder packed into few large files for training at scale.

Millions of small audio files are slow to open on network storage; shards are read
sequentially instead. ``write_shards`` packs a data folder into ``shard-000000.tar``, ...
(each utterance as ``<key>.json`` ``{"utt": id, "spk": speaker or null}`` followed by
``<key>.flac``, 16-bit, 16 kHz; ``key`` is the utterance id percent-encoded so it holds no
``/``) and lists them in ``shards.list``. ``ShardDataset`` streams them back, each shard to
exactly one (rank, data-loader worker) pair.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from cdino.data.audio import SAMPLE_RATE, SkippedFiles, decode_audio, encode_audio, \
    load_audio_or_skip
from cdino.data.kaldi_dir import DataDir, read_text_lines, write_scp
from cdino.errors import AudioError, DataError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

LIST_NAME = "shards.list"
_SHARD_NAME = re.compile(r"^shard-\d{6}\.tar$")
_TAR_OVERHEAD = 3 * 512  # a header block per member plus padding, roughly


def shard_key(utt: str) -> str:
    """The member name stem of an utterance: its id with ``/`` and ``%`` percent-encoded."""
    return quote(utt, safe="-_.~+=,@:")


def utt_of_key(key: str) -> str:
    """Inverse of :func:`shard_key`."""
    return unquote(key)


class _ShardWriter:
    """Writes numbered tar shards, each first as ``.tmp`` then renamed into place."""

    def __init__(self, out_dir: Path, limit_bytes: int) -> None:
        self.out_dir, self.limit = out_dir, limit_bytes
        self.paths: list[Path] = []
        self.tar: tarfile.TarFile | None = None
        self.size = 0

    def _open(self) -> None:
        path = self.out_dir / f"shard-{len(self.paths):06d}.tar"
        self.paths.append(path)
        self.tar = tarfile.open(path.with_name(path.name + ".tmp"), "w", format=tarfile.GNU_FORMAT)
        self.size = 0

    def close_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            os.replace(self.paths[-1].with_name(self.paths[-1].name + ".tmp"), self.paths[-1])
            self.tar = None

    def add(self, key: str, members: list[tuple[str, bytes]]) -> Path:
        """Add one utterance's members; start a new shard when this one would overflow."""
        size = sum(len(data) + _TAR_OVERHEAD for _, data in members)
        if self.tar is not None and self.size > 0 and self.size + size > self.limit:
            self.close_shard()
        if self.tar is None:
            self._open()
        for suffix, data in members:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self.tar.addfile(info, io.BytesIO(data))
        self.size += size
        return self.paths[-1]


def write_shards(data_dir: PathLike, out_dir: PathLike, shard_mb: float = 256,
                 progress: bool = True, *, shuffle: bool = True, seed: int = 0) -> list[Path]:
    """Pack a data folder into tar shards of about ``shard_mb`` MiB; returns their paths.

    Utterances are shuffled (by ``seed``) before packing so that every shard mixes
    speakers. Also writes ``shards.list``, ``utt2shard`` and, when audio files could
    not be read, ``skipped.tsv`` (those utterances are left out).
    """
    if shard_mb <= 0:
        raise ValueError(f"shard_mb must be positive, got {shard_mb}")
    data = DataDir.load(data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = list(data.utts)
    if shuffle:
        order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    writer = _ShardWriter(out, int(shard_mb * 2**20))
    skipped = SkippedFiles()
    utt2shard: dict[str, str] = {}
    no_bar = not progress or os.environ.get("CDINO_NO_PROGRESS", "") not in ("", "0")
    try:
        for utt in tqdm(order, desc="writing shards", unit=" utt", disable=no_bar):
            wave = load_audio_or_skip(data.wav[utt], SAMPLE_RATE, skipped=skipped)
            if wave is None:
                continue
            spk = data.utt2spk[utt] if data.utt2spk is not None else None
            meta = json.dumps({"utt": utt, "spk": spk}).encode("utf-8")
            path = writer.add(shard_key(utt), [("json", meta),
                                               ("flac", encode_audio(wave, SAMPLE_RATE))])
            utt2shard[utt] = path.name
    finally:
        writer.close_shard()
    if not utt2shard:
        raise DataError(f"{data_dir}: no readable audio to write ({skipped.summary()})")
    written = {p.name for p in writer.paths}
    for old in out.iterdir():
        if _SHARD_NAME.match(old.name) and old.name not in written:
            old.unlink()  # left over from an earlier, larger run
    (out / "skipped.tsv").unlink(missing_ok=True)
    if skipped.count:
        skipped.write(out / "skipped.tsv")
        log.warning("write_shards: %s", skipped.summary())
    write_scp(out / "utt2shard", utt2shard)
    tmp = out / (LIST_NAME + ".tmp")
    tmp.write_text("".join(f"{p.name}\n" for p in writer.paths), encoding="utf-8")
    os.replace(tmp, out / LIST_NAME)
    return list(writer.paths)


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


class ShardDataset(IterableDataset):
    """Utterances streamed from tar shards as ``{"utt", "spk", "wave"}`` dicts.

    Shards are dealt round-robin to the ``world_size × num_workers`` (rank, worker) pairs,
    so across all of them every utterance comes once per epoch. With ``shuffle`` the shard
    order is permuted per epoch (the same on every rank: seeded by ``seed`` and ``epoch``)
    and, when ``shuffle_buffer > 0``, utterances pass through an in-memory buffer of that
    many and leave it in random order. Unreadable members are skipped and counted in
    ``self.skipped`` (per process; a data-loader worker logs its own count).
    """

    def __init__(self, list_path: PathLike, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, seed: int = 0, epoch: int = 0, *,
                 shuffle_buffer: int = 0, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.list_path = Path(list_path)
        self.shards = read_shard_list(self.list_path)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch
        self.shuffle_buffer, self.sample_rate = shuffle_buffer, sample_rate
        self.skipped = SkippedFiles()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard order (and buffer shuffle) to produce."""
        self.epoch = epoch

    @property
    def num_utts(self) -> int | None:
        """Utterances in all shards, from ``utt2shard`` beside the list (``None`` if absent)."""
        path = self.list_path.parent / "utt2shard"
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())

    def shards_for(self, worker: int = 0, num_workers: int = 1) -> list[Path]:
        """The shards this rank's data-loader ``worker`` (of ``num_workers``) reads this epoch."""
        order = list(self.shards)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        slot, n_slots = self.rank * num_workers + worker, self.world_size * num_workers
        return order[slot::n_slots]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards_for(worker, num_workers)
        if not shards:
            log.warning("%s: rank %d worker %d gets no shard (%d shards for %d readers)",
                        self.list_path, self.rank, worker, len(self.shards),
                        self.world_size * num_workers)
        before = self.skipped.count
        items = (item for shard in shards for item in self._read_shard(shard))
        if self.shuffle and self.shuffle_buffer > 0:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
            items = _buffer_shuffle(items, self.shuffle_buffer, rng)
        yield from items
        if self.skipped.count > before:
            log.warning("%s (rank %d worker %d): %s", self.list_path, self.rank, worker,
                        self.skipped.summary())

    def _read_shard(self, shard: Path) -> Iterator[dict]:
        """The utterances of one shard; members are grouped by key (``<key>.<suffix>``)."""
        key, members = None, {}
        with _TarReader(shard) as tar:
            for name, data in tar:
                stem, _, suffix = name.rpartition(".")
                if not stem:
                    self.skipped.add(f"{shard}:{name}", "member name without <key>.<suffix>")
                    continue
                if stem != key:
                    item = self._decode(shard, key, members) if key is not None else None
                    if item is not None:
                        yield item
                    key, members = stem, {}
                members[suffix] = data
        if tar.error is not None:
            self.skipped.add(shard, f"unreadable tar, rest of shard skipped ({tar.error})")
            return  # the last, partly read utterance is lost with the rest
        if key is not None:
            item = self._decode(shard, key, members)
            if item is not None:
                yield item

    def _decode(self, shard: Path, key: str, members: dict[str, bytes]) -> dict | None:
        where = f"{shard}:{key}"
        if "json" not in members or "flac" not in members:
            have = ", ".join(sorted(members)) or "nothing"
            self.skipped.add(where, f"incomplete utterance (needs .json and .flac, has {have})")
            return None
        try:
            meta = json.loads(members["json"].decode("utf-8"))
            utt, spk = meta["utt"], meta.get("spk")
            if not isinstance(utt, str) or not (spk is None or isinstance(spk, str)):
                raise TypeError("'utt' must be a string and 'spk' a string or null")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.skipped.add(where + ".json", f"bad metadata ({exc})")
            return None
        try:
            wave = decode_audio(members["flac"], self.sample_rate, name=where + ".flac")
        except AudioError as exc:
            message, prefix = str(exc), where + ".flac: "
            self.skipped.add(where + ".flac", message.removeprefix(prefix))
            return None
        return {"utt": utt, "spk": spk, "wave": wave}


class _TarReader:
    """Iterates ``(name, bytes)`` of the files in a tar, streaming; a damaged tar ends the
    iteration early and leaves the reason in ``error``."""

    def __init__(self, path: Path) -> None:
        self.path, self.error = path, None
        self.tar: tarfile.TarFile | None = None

    def __enter__(self) -> _TarReader:
        return self

    def __exit__(self, *exc) -> None:
        if self.tar is not None:
            self.tar.close()

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        try:
            self.tar = tarfile.open(self.path, "r|")
            for info in self.tar:
                if info.isfile():
                    f = self.tar.extractfile(info)
                    yield info.name, f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.error = str(exc) or type(exc).__name__


def _buffer_shuffle(items: Iterator[dict], size: int, rng: np.random.Generator
                    ) -> Iterator[dict]:
    """Stream ``items`` through a buffer of ``size``, emitting a random buffered one each time."""
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], item = item, buffer[i]
        yield item
    order = rng.permutation(len(buffer))
    for i in order:
        yield buffer[i]
