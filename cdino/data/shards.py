"""Tar shards: a data folder packed into few large files for training at scale.

Millions of small audio files are slow to open on network storage. ``write_shards`` packs
a data folder into ``shard-000000.tar``, ... in the shard folder format of
:mod:`cdino.data.shard_index` (``shards.list``, ``shards.index``, ``<key>.json`` +
``<key>.flac`` members), in the order of the source data folder.

Training reads shards like any data folder (``DataDir.load`` on the shard folder,
``open_store`` → :class:`cdino.data.stores.ShardStore`): a crop is one ``pread`` of the
member's bytes and a flac decode, so the trainer's map-style sampler (global batch, ranks,
exact resume) works unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np

from cdino.atomic import temp_path, write_lines
from cdino.console import progress_bar
from cdino.data.audio import SAMPLE_RATE, SkippedFiles, encode_audio, load_audio_or_skip
from cdino.data.kaldi_dir import DataDir, write_scp
from cdino.data.shard_index import INDEX_NAME, LIST_NAME, SHARD_NAME, shard_key, write_index
from cdino.errors import DataError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

_TAR_OVERHEAD = 3 * 512  # a header block per member plus padding, roughly
_BLOCK = 512


class _ShardWriter:
    """Writes numbered tar shards, each under :func:`cdino.atomic.temp_path` then renamed into place."""

    def __init__(self, out_dir: Path, limit_bytes: int) -> None:
        self.out_dir, self.limit = out_dir, limit_bytes
        self.paths: list[Path] = []
        self.tar: tarfile.TarFile | None = None
        self.size = 0

    def _open(self) -> None:
        path = self.out_dir / f"shard-{len(self.paths):06d}.tar"
        self.paths.append(path)
        self.tar = tarfile.open(temp_path(path), "w", format=tarfile.GNU_FORMAT)
        self.size = 0

    def close_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            os.replace(temp_path(self.paths[-1]), self.paths[-1])
            self.tar = None

    def add(self, key: str, members: list[tuple[str, bytes]]) -> tuple[int, dict[str, tuple[int, int]]]:
        """Add one utterance's members; start a new shard when this one would overflow.

        Returns the shard's number and, per suffix, ``(data offset, size)`` in the tar.
        """
        size = sum(len(data) + _TAR_OVERHEAD for _, data in members)
        if self.tar is not None and self.size > 0 and self.size + size > self.limit:
            self.close_shard()
        if self.tar is None:
            self._open()
        where = {}
        for suffix, data in members:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self.tar.addfile(info, io.BytesIO(data))
            # after addfile the tar's offset is the end of the member's padded data
            where[suffix] = (self.tar.offset - -(-len(data) // _BLOCK) * _BLOCK, len(data))
        self.size += size
        return len(self.paths) - 1, where


def write_shards(data_dir: PathLike, out_dir: PathLike, shard_mb: float = 256,
                 progress: bool = True, *, shuffle: bool = True, seed: int = 0) -> list[Path]:
    """Pack a data folder into tar shards of about ``shard_mb`` MiB; returns their paths.

    Utterances are shuffled (by ``seed``) before packing so that every shard mixes
    speakers. Also writes ``shards.list``, ``shards.index`` (in the data folder's order:
    training from the shards sees the same utterances, crops and batches as training from
    the folder), ``utt2shard`` and, when audio files could not be read, ``skipped.tsv``
    (those utterances are left out).
    """
    if shard_mb <= 0:
        raise ValueError(f"shard_mb must be positive, got {shard_mb}")
    data = DataDir.load(data_dir)
    if data.shards is not None:
        raise DataError(f"{data_dir}: already a shard folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = list(data.utts)
    if shuffle:
        order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    writer = _ShardWriter(out, int(shard_mb * 2**20))
    skipped = SkippedFiles()
    utt2shard: dict[str, str] = {}
    entries: dict[str, tuple] = {}
    try:
        for utt in progress_bar(order, desc="writing shards", unit=" utt", show=progress, lines=10):
            wave = load_audio_or_skip(data.wav[utt], SAMPLE_RATE, skipped=skipped)
            if wave is None:
                continue
            spk = data.utt2spk[utt] if data.utt2spk is not None else None
            meta = json.dumps({"utt": utt, "spk": spk}).encode("utf-8")
            number, where = writer.add(shard_key(utt), [("json", meta),
                                                        ("flac", encode_audio(wave, SAMPLE_RATE))])
            utt2shard[utt] = writer.paths[number].name
            entries[utt] = (utt, spk, number, *where["flac"], len(wave))
    finally:
        writer.close_shard()
    if not utt2shard:
        raise DataError(f"{data_dir}: no readable audio to write ({skipped.summary()})")
    written = {p.name for p in writer.paths}
    for old in out.iterdir():
        if SHARD_NAME.match(old.name) and old.name not in written:
            old.unlink()  # left over from an earlier, larger run
    (out / "skipped.tsv").unlink(missing_ok=True)
    if skipped.count:
        skipped.write(out / "skipped.tsv")
        log.warning("write_shards: %s", skipped.summary())
    write_scp(out / "utt2shard", utt2shard)
    write_index(out / INDEX_NAME, writer.paths, (entries[u] for u in data.utts if u in entries), [])
    write_lines(out / LIST_NAME, (p.name for p in writer.paths))
    return list(writer.paths)
