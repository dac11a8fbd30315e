"""Full-utterance speaker embeddings of a data folder: batched by length, sharded, resumable.

Evaluation embeds each test utterance whole (no fixed crop). Utterances are sorted by
length and batched only when they have the same number of fbank frames, so a batched
embedding equals the one of the utterance alone; clustering callers may allow a small
trim (``bucket_tolerance``) to batch more.

With an ``out_dir`` the work is split into fixed shards of ``shard_size`` utterances;
each finished shard is written atomically to ``out_dir/shards/NNNNN.npy`` (+ ``.json``
naming its utterances), so a killed run resumes where it stopped, and ranks of a
multi-process run take shards round-robin. When every shard exists they are merged into
``out_dir/embeddings.npy`` + ``out_dir/utts.txt`` (see :func:`merge_embeddings`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from cdino.allocator import keep_freed_memory
from cdino.atomic import save_npy, write_lines, write_text
from cdino.console import progress_bar
from cdino.data.audio import SAMPLE_RATE, audio_info, load_audio
from cdino.data.kaldi_dir import DataDir
from cdino.errors import AudioError, DataError
from cdino.testing.faults import fault_point

DEFAULT_BATCH_FRAMES = 30_000  # fbank frames per batch: 5 minutes of audio at a 10 ms shift
DEFAULT_SHARD_SIZE = 2000  # utterances per resumable shard
MIN_FRAMES = 10  # shorter utterances (< 0.1 s) are bad audio


# ---------------------------------------------------------------------------
# small file helpers


def _record_skip(skipped, utt: str, path: str, reason: str) -> None:
    """Count a bad file in ``skipped``: a list gets ``(utt, reason)``; an object with
    ``add(path, reason)`` (:class:`cdino.data.audio.SkippedFiles`) gets the file's path."""
    if skipped is None:
        return
    if hasattr(skipped, "add"):
        prefix = f"{path}: "
        skipped.add(path, reason[len(prefix):] if reason.startswith(prefix) else reason)
    else:
        skipped.append((utt, reason))


# ---------------------------------------------------------------------------
# batching


def _fbank_setting(fbank: nn.Module, name: str, default):
    cfg = getattr(fbank, "cfg", None) or getattr(fbank, "config", None)
    return getattr(cfg, name, default)


def num_frames(fbank: nn.Module, n_samples: int) -> int:
    """Number of fbank frames of ``n_samples`` samples."""
    if hasattr(fbank, "num_frames"):
        return int(fbank.num_frames(n_samples))
    rate = _fbank_setting(fbank, "sample_rate", SAMPLE_RATE)
    win = int(rate * _fbank_setting(fbank, "frame_length_ms", 25.0) / 1000)
    hop = int(rate * _fbank_setting(fbank, "frame_shift_ms", 10.0) / 1000)
    if _fbank_setting(fbank, "snip_edges", True):
        return 0 if n_samples < win else 1 + (n_samples - win) // hop
    return (n_samples + hop // 2) // hop


def _length_key(fbank: nn.Module, n_samples: int) -> int:
    """What must be equal for two utterances to batch exactly.

    With ``snip_edges`` (Kaldi's default) samples after the last frame are ignored, so the
    same frame count suffices; otherwise the last frame is padded from the signal's end
    and only an identical sample count is exact.
    """
    if _fbank_setting(fbank, "snip_edges", True):
        return num_frames(fbank, n_samples)
    return n_samples


def plan_batches(lengths: Sequence[int], fbank: nn.Module, batch_frames: int,
                 bucket_tolerance: float = 0.0) -> list[list[int]]:
    """Group utterance indices (lengths in samples) into batches of trimmable equal length.

    Sorted by length; an utterance joins the current batch when trimming it to the batch's
    shortest member drops at most ``bucket_tolerance`` of its frames (0: none, i.e. only
    exactly equal lengths batch) and the trimmed batch stays within ``batch_frames``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    base_frames = base_key = 0
    for i in order:
        frames = num_frames(fbank, lengths[i])
        key = _length_key(fbank, lengths[i])
        if current:
            fits = (len(current) + 1) * base_frames <= batch_frames
            if bucket_tolerance > 0:
                same = (frames - base_frames) <= bucket_tolerance * frames
            else:
                same = key == base_key
            if fits and same:
                current.append(i)
                continue
            batches.append(current)
        current, base_frames, base_key = [i], frames, key
    if current:
        batches.append(current)
    return batches


@contextlib.contextmanager
def _inference_context(device: torch.device, amp: bool):
    with torch.inference_mode():
        if amp and device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield


def _check_eval_mode(encoder: nn.Module) -> None:
    if any(m.training for m in encoder.modules()):
        raise ValueError("extract_embeddings needs the encoder in eval mode (call .eval() first); "
                         "it does not change the module's mode itself")


def _run_trimmed(encoder: nn.Module, fbank: nn.Module, waves: list[torch.Tensor],
                 device: torch.device) -> torch.Tensor:
    """Embed waves of (nearly) equal length as one batch, trimmed to the shortest."""
    n = min(int(w.shape[-1]) for w in waves)
    batch = torch.stack([w[:n] for w in waves]).to(device, torch.float32, non_blocking=True)
    feats = fbank(batch)
    return encoder(feats).float()


def embed_waves(encoder: nn.Module, fbank: nn.Module, waves: Sequence[np.ndarray | torch.Tensor],
                device: str | torch.device = "cpu", batch_frames: int = DEFAULT_BATCH_FRAMES,
                bucket_tolerance: float = 0.0, amp: bool = False) -> torch.Tensor:
    """Embeddings ``(N, D)`` (on ``device``) of in-memory 16 kHz waveforms, batched by length."""
    device = torch.device(device)
    tensors = [torch.as_tensor(np.asarray(w, dtype=np.float32)) if not torch.is_tensor(w)
               else w.float() for w in waves]
    for i, w in enumerate(tensors):
        if w.dim() != 1:
            raise ValueError(f"waveform {i} must be 1-D, got shape {tuple(w.shape)}")
        if num_frames(fbank, int(w.shape[0])) < 1:
            raise ValueError(f"waveform {i} is too short for one fbank frame ({w.shape[0]} samples)")
    out: list[torch.Tensor | None] = [None] * len(tensors)
    batches = plan_batches([int(w.shape[0]) for w in tensors], fbank, batch_frames, bucket_tolerance)
    with _inference_context(device, amp):
        for batch in batches:
            emb = _run_trimmed(encoder, fbank, [tensors[i] for i in batch], device)
            for row, i in enumerate(batch):
                out[i] = emb[row]
    if not out:
        return torch.zeros(0, 0, device=device)
    return torch.stack(out)  # type: ignore[arg-type]


def _prefetch(fn: Callable, items: Iterable, depth: int = 2, workers: int = 2) -> Iterator:
    """``map(fn, items)`` computed ``depth`` items ahead in background threads (audio I/O)."""
    items = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: deque = deque()
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) > depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


# ---------------------------------------------------------------------------
# shards on disk


def _list_digest(utts: Sequence[str], shard_size: int) -> str:
    h = hashlib.sha256()
    h.update(f"{shard_size}\n".encode())
    for u in utts:
        h.update(u.encode())
        h.update(b"\n")
    return h.hexdigest()


def _shard_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    base = out_dir / "shards" / f"{index:05d}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def _check_manifest(out_dir: Path, utts: Sequence[str], shard_size: int) -> int:
    """Write (or check) ``shards/manifest.json``; returns the number of shards."""
    n_shards = (len(utts) + shard_size - 1) // shard_size
    manifest = {"n_utts": len(utts), "shard_size": shard_size, "n_shards": n_shards,
                "digest": _list_digest(utts, shard_size)}
    path = out_dir / "shards" / "manifest.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old != manifest:
            raise DataError(f"{path}: this folder holds embeddings of another utterance list or "
                            "shard size; remove it or choose another output folder")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(manifest, indent=1) + "\n")
    return n_shards


def _read_shard(out_dir: Path, index: int) -> tuple[list[str], np.ndarray, list[tuple[str, str]]] | None:
    """A finished shard's (utts, embeddings, skipped), or None when it is not finished."""
    npy, meta = _shard_paths(out_dir, index)
    if not npy.exists() or not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        emb = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{npy}: unreadable embedding shard ({exc}); delete it to recompute") from None
    if emb.ndim != 2 or emb.shape[0] != len(info["utts"]):
        raise DataError(f"{npy}: {emb.shape[0]} rows for {len(info['utts'])} utterances; "
                        "delete it to recompute")
    return list(info["utts"]), emb, [tuple(s) for s in info.get("skipped", [])]


def _write_shard(out_dir: Path, index: int, utts: list[str], emb: np.ndarray,
                 skipped: list[tuple[str, str]]) -> None:
    npy, meta = _shard_paths(out_dir, index)
    write_text(meta, json.dumps({"utts": utts, "skipped": [list(s) for s in skipped]}) + "\n")
    save_npy(npy, emb)  # written last: its presence marks the shard finished


def merge_embeddings(out_dir: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Join all finished shards of ``out_dir`` into ``embeddings.npy`` + ``utts.txt``.

    Raises :class:`DataError` when a shard is missing (another rank still running, or a
    killed run to resume).
    """
    out_dir = Path(out_dir)
    path = out_dir / "shards" / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{path}: missing or unreadable; run the extraction first") from None
    utts: list[str] = []
    parts: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    missing = []
    for index in range(manifest["n_shards"]):
        shard = _read_shard(out_dir, index)
        if shard is None:
            missing.append(index)
            continue
        utts += shard[0]
        parts.append(shard[1])
        skipped += shard[2]
    if missing:
        raise DataError(f"{out_dir / 'shards'}: {len(missing)} of {manifest['n_shards']} shards "
                        f"not finished (first: {missing[0]:05d}); run the extraction again to finish them")
    emb = _concat(parts)
    _write_merged(out_dir, utts, emb, skipped)
    return utts, emb


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if p.shape[0] > 0]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32, copy=False))


def load_embeddings(out_dir: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read ``embeddings.npy`` + ``utts.txt`` written by :func:`extract_embeddings`."""
    out_dir = Path(out_dir)
    npy, txt = out_dir / "embeddings.npy", out_dir / "utts.txt"
    for p in (txt, npy):
        if not p.exists():
            raise DataError(f"{p}: not found (an embeddings folder holds embeddings.npy and utts.txt)")
    utts = [line.strip() for line in txt.read_text().splitlines() if line.strip()]
    try:
        emb = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{npy}: not a readable .npy array ({exc})") from None
    if emb.ndim != 2 or emb.shape[0] != len(utts):
        raise DataError(f"{npy}: shape {emb.shape} does not match the {len(utts)} utterances in {txt}")
    return utts, emb.astype(np.float32, copy=False)


def mean_embedding(emb: np.ndarray) -> np.ndarray:
    """Mean embedding ``(D,)`` float32 (accumulated in float64), subtracted before cosine scoring."""
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"mean_embedding needs a non-empty (N, D) array, got shape {emb.shape}")
    return emb.mean(axis=0, dtype=np.float64).astype(np.float32)


# ---------------------------------------------------------------------------
# extraction: one extractor for evaluation, `cdino embed`, model export and clustering


def _resolve_utts(data: DataDir, utts: Sequence[str] | None) -> list[str]:
    if utts is None:
        return list(data.utts)
    known = data.wav
    out = []
    seen = set()
    for u in utts:
        if u not in known:
            raise DataError(f"{data.root / 'wav.scp'}: utterance '{u}' is not in this data folder")
        if u not in seen:
            seen.add(u)
            out.append(u)
    return out


class _DirSource:
    """Utterances of a data folder read whole from their files (lengths from ``utt2dur``
    when the folder has one, else from the file headers, read in parallel)."""

    def __init__(self, data: DataDir, utts: list[str], rate: int) -> None:
        self.data, self.utts, self.rate = data, utts, rate
        self._known = data.durations() or {}  # utt2dur, read and checked by DataDir.load

    def path(self, i: int) -> str:
        return self.data.wav[self.utts[i]]

    def lengths(self, indices: Sequence[int]) -> list[int | AudioError]:
        def one(i: int):
            u = self.utts[i]
            if u in self._known:
                return int(round(self._known[u] * self.rate))
            try:
                info = audio_info(self.path(i))
            except AudioError as exc:
                return exc
            return int(round(info.frames * self.rate / info.sample_rate))

        if len(indices) < 64 or all(self.utts[i] in self._known for i in indices):
            return [one(i) for i in indices]
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, indices))

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        wave = load_audio(self.path(i), self.rate)
        return wave[offset:offset + n] if (offset or n < len(wave)) else wave


class _StoreSource:
    """Utterances of a training store (:mod:`cdino.data.loader`): memory, files or shards;
    with ``rows``, only those store rows (in that order)."""

    def __init__(self, store, rows: Sequence[int] | None = None) -> None:
        self.store = store
        self.rows = list(range(len(store))) if rows is None else [int(r) for r in rows]
        utts = store.utts
        self.utts = [utts[r] for r in self.rows]

    def path(self, i: int) -> str:
        paths = getattr(self.store, "paths", None)
        return paths[self.rows[i]] if paths is not None else self.utts[i]

    def lengths(self, indices: Sequence[int]) -> list[int | AudioError]:
        return [int(self.store.num_samples(self.rows[i])) for i in indices]

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        return self.store.read(self.rows[i], offset, n)


class _BatchReads(torch.utils.data.Dataset):
    """Item ``k``: the waveforms of planned batch ``k`` (an ``AudioError`` for a bad file),
    each cropped to its planned length at the utterance's centre."""

    def __init__(self, source, batches: list[list[int]], full: dict[int, int], want: dict[int, int]) -> None:
        self.source, self.batches, self.full, self.want = source, batches, full, want

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        waves = []
        for i in self.batches[k]:
            n, total = self.want[i], self.full[i]
            try:
                w = self.source.read(i, max(0, (total - n) // 2), n)
                waves.append(torch.from_numpy(np.ascontiguousarray(w[:n], dtype=np.float32)))
            except AudioError as exc:
                waves.append(exc)
        return self.batches[k], waves


def _first(item):
    return item


def _batch_iter(dataset: _BatchReads, num_workers: int) -> Iterator:
    """The planned batches' waveforms, read ahead: DataLoader workers, or two I/O threads."""
    if num_workers > 0 and len(dataset) > 1:
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False,
                                             num_workers=min(num_workers, len(dataset)),
                                             collate_fn=_first, prefetch_factor=2)
        yield from loader
    else:
        yield from _prefetch(dataset.__getitem__, range(len(dataset)))


def _crop_length(n: int, max_samples: int | None, quantum: int) -> int:
    if max_samples is not None:
        n = min(n, max_samples)
    if quantum > 1:
        n = max(min(n, quantum), (n // quantum) * quantum)
    return n


def _embed_shard(encoder: nn.Module, fbank: nn.Module, source, indices: list[int],
                 device: torch.device, batch_frames: int, bucket_tolerance: float,
                 amp: bool, skip_bad: bool, max_samples: int | None, quantum: int,
                 num_workers: int, bar) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Embed one shard (indices into ``source``); returns (utts kept in input order,
    (n, D) float32, skipped)."""
    bad: dict[int, str] = {}
    full: dict[int, int] = {}
    for i, n in zip(indices, source.lengths(indices)):
        if isinstance(n, AudioError):
            bad[i] = str(n)
        elif num_frames(fbank, _crop_length(n, max_samples, quantum)) < MIN_FRAMES:
            bad[i] = f"{source.path(i)}: too short for an embedding ({n} samples)"
        else:
            full[i] = n
    if bad and not skip_bad:
        raise AudioError(next(iter(bad.values())))
    good = [i for i in indices if i in full]
    want = {i: _crop_length(full[i], max_samples, quantum) for i in good}
    batches = [[good[j] for j in b]
               for b in plan_batches([want[i] for i in good], fbank, batch_frames, bucket_tolerance)]
    if bar is not None and len(good) < len(indices):
        bar.update(len(indices) - len(good))
    rows: dict[int, torch.Tensor] = {}
    with _inference_context(device, amp):
        for batch, waves in _batch_iter(_BatchReads(source, batches, full, want), num_workers):
            ok = []
            for i, w in zip(batch, waves):
                if isinstance(w, AudioError):
                    if not skip_bad:
                        raise w
                    bad[i] = str(w)
                else:
                    ok.append((i, w))
            # Regroup by the decoded lengths (a resampled file may differ by a sample).
            sub = plan_batches([int(w.shape[0]) for _, w in ok], fbank, batch_frames, bucket_tolerance)
            for group in sub:
                emb = _run_trimmed(encoder, fbank, [ok[j][1] for j in group], device)
                for row, j in enumerate(group):
                    rows[ok[j][0]] = emb[row]
            fault_point("extraction")
            if bar is not None:
                bar.update(len(batch))
    kept = [i for i in indices if i in rows]
    emb = (torch.stack([rows[i] for i in kept]).cpu().numpy().astype(np.float32) if kept
           else np.zeros((0, 0), dtype=np.float32))
    skipped = [(source.utts[i], bad[i]) for i in indices if i in bad]
    return [source.utts[i] for i in kept], emb, skipped


def _process_group() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def extract_embeddings(encoder: nn.Module, fbank: nn.Module, data_dir: str | os.PathLike | DataDir | None = None,
                       out_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                       utts: Sequence[str] | None = None, batch_frames: int = DEFAULT_BATCH_FRAMES,
                       shard_size: int = DEFAULT_SHARD_SIZE, rank: int = 0, world_size: int = 1,
                       progress: bool = True, skipped=None, bucket_tolerance: float = 0.0,
                       skip_bad: bool = False, amp: bool = False,
                       on_shard: Callable[[int], None] | None = None, *, store=None,
                       max_seconds: float | None = None, quantum_seconds: float = 0.0,
                       num_workers: int = 0, distributed: bool = False,
                       desc: str = "embeddings", store_rows: Sequence[int] | None = None
                       ) -> tuple[list[str], np.ndarray]:
    """Full-utterance embeddings of a data folder's utterances (or the subset ``utts``), or
    of a training ``store``'s utterances (``store=``, in store order; ``store_rows``: only
    those rows, in that order).

    ``encoder`` maps ``(B, T, 80)`` fbank to ``(B, D)`` and must already be in eval mode
    (this function never changes a module's mode); ``fbank`` maps ``(B, samples)`` to
    ``(B, T, 80)``. Both are moved to ``device``. ``amp`` runs the encoder under bf16
    autocast on CUDA. Bad audio raises :class:`AudioError`, or with ``skip_bad`` is left
    out and recorded in ``skipped`` (a list of ``(utt, reason)`` or an object with
    ``add(utt, reason)``). ``on_shard(index)`` is called after each shard is finished.

    ``max_seconds`` embeds at most the central part of that length (clustering of long
    training utterances); ``quantum_seconds`` rounds each length down to a multiple of it
    (centred), so that many utterances batch exactly. Reads are prefetched by
    ``num_workers`` DataLoader workers (0: two I/O threads).

    Ranks: with ``distributed`` (and a process group, e.g. under ``torchrun``) every rank
    embeds every ``world``-th shard on its own device and the shards are gathered, so each
    rank returns all embeddings; call it on every rank. Otherwise ``rank``/``world_size``
    split the shards by hand (``cdino embed --rank``): only this rank's shards are
    returned, and :func:`merge_embeddings` joins them once all are done. Shards are fixed
    lists of ``shard_size`` utterances batched alone, so the embeddings do not depend on
    the number of ranks.

    Returns ``(utts, emb)``: the utterances embedded, in the input order, and float32
    ``(N, D)`` embeddings (not normalised).
    """
    keep_freed_memory()  # batches' buffers stay in the heap for the next batch (cdino/allocator.py)
    gathered = False
    if distributed:
        rank, world_size = _process_group()
        gathered = world_size > 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if shard_size < 1 or batch_frames < 1:
        raise ValueError("shard_size and batch_frames must be positive")
    _check_eval_mode(encoder)
    device = torch.device(device)
    rate = int(_fbank_setting(fbank, "sample_rate", SAMPLE_RATE))
    if store is not None:
        source = _StoreSource(store, store_rows)
        data = None
    else:
        if data_dir is None:
            raise ValueError("extract_embeddings needs a data folder or a store")
        data = data_dir if isinstance(data_dir, DataDir) else DataDir.load(data_dir)
        source = _DirSource(data, _resolve_utts(data, utts), rate)
    utt_list = source.utts
    max_samples = int(max_seconds * rate) if max_seconds else None
    quantum = max(1, int(quantum_seconds * rate))
    encoder.to(device)
    fbank.to(device)

    out = Path(out_dir) if out_dir is not None else None
    if out is None and world_size == 1:
        shard_size = max(1, len(utt_list))  # nothing to resume: one shard, all headers checked first
    n_shards = (len(utt_list) + shard_size - 1) // shard_size
    if out is not None:
        if rank == 0 or not gathered:
            n_shards = _check_manifest(out, utt_list, shard_size)
        if gathered:
            _barrier()
        if (world_size == 1 or gathered) and (out / "embeddings.npy").exists() and (out / "utts.txt").exists():
            done_utts, done_emb = load_embeddings(out)
            _replay_skipped(out, skipped, source)
            return done_utts, done_emb

    mine = [s for s in range(n_shards) if s % world_size == rank]
    results: dict[int, tuple[list[str], np.ndarray, list[tuple[str, str]]]] = {}
    todo = []
    for s in mine:
        shard = _read_shard(out, s) if out is not None else None
        if shard is not None:
            results[s] = shard
        else:
            todo.append(s)
    n_todo = sum(min(shard_size, len(utt_list) - s * shard_size) for s in todo)
    bar = progress_bar(total=n_todo, desc=desc, unit="utt", leave=False, show=progress and rank == 0) if n_todo else None
    try:
        for s in todo:
            indices = list(range(s * shard_size, min((s + 1) * shard_size, len(utt_list))))
            result = _embed_shard(encoder, fbank, source, indices, device, batch_frames,
                                  bucket_tolerance, amp, skip_bad, max_samples, quantum,
                                  num_workers, bar)
            if out is not None:
                _write_shard(out, s, *result)
            results[s] = result
            if on_shard is not None:
                on_shard(s)
    finally:
        if bar is not None:
            bar.close()

    if gathered:
        results = _gather_shards(results)
        mine = list(range(n_shards))
    for s in mine:
        for u, reason in results[s][2]:
            _record_skip(skipped, u, _source_path(source, u), reason)
    done_utts = [u for s in mine for u in results[s][0]]
    emb = _concat([results[s][1] for s in mine])
    if out is not None and world_size == 1:
        return merge_embeddings(out)
    if out is not None and gathered:
        if rank == 0:
            _write_merged(out, done_utts, emb, [x for s in mine for x in results[s][2]])
        _barrier()
    return done_utts, emb


def _source_path(source, utt: str) -> str:
    data = getattr(source, "data", None)
    return data.wav.get(utt, utt) if data is not None else utt


def _replay_skipped(out: Path, skipped, source) -> None:
    skip_file = out / "skipped.txt"
    if skip_file.exists():
        for line in skip_file.read_text().splitlines():
            if line.strip():
                u, _, r = line.partition("\t")
                _record_skip(skipped, u, _source_path(source, u), r)


def _write_merged(out: Path, utts: list[str], emb: np.ndarray, skipped: list[tuple[str, str]]) -> None:
    write_lines(out / "utts.txt", utts)
    if skipped:
        write_lines(out / "skipped.txt", (f"{u}\t{r}" for u, r in skipped))
    save_npy(out / "embeddings.npy", emb)  # written last: its presence marks the result whole


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _gather_shards(results: dict) -> dict:
    """Every rank's finished shards, on every rank (objects over the process group)."""
    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, results)
    merged: dict = {}
    for p in parts:
        merged.update(p)
    return merged


def embed_training_store(encoder: nn.Module, fbank: nn.Module, store, device: torch.device,
                         max_seconds: float, progress: bool = False, desc: str = "embedding",
                         num_workers: int = 0, rows: Sequence[int] | None = None) -> np.ndarray:
    """(N, D) float32 embeddings of every utterance of a training store, in store order (or
    of the store ``rows`` given, in that order), for clustering: the central
    ``max_seconds`` of each, lengths rounded down to 0.1 s so that batches stack exactly.
    Call on every rank: the work is split over the process group. The encoder is
    embedded in eval mode and put back in the mode it had."""
    was_training = encoder.training
    encoder.eval()
    try:
        utts, emb = extract_embeddings(encoder, fbank, store=store, device=device, max_seconds=max_seconds,
                                       quantum_seconds=0.1, batch_frames=24_000, distributed=True,
                                       progress=progress, desc=desc, num_workers=num_workers,
                                       amp=device.type == "cuda", skip_bad=True, store_rows=rows)
    finally:
        if was_training:
            encoder.train()
    wanted = list(store.utts) if rows is None else [store.utts[r] for r in rows]
    if len(utts) == len(wanted):
        return emb
    # A file that failed to read keeps its row (zeros), so rows stay in the order asked for.
    full = np.zeros((len(wanted), emb.shape[1] if emb.size else getattr(encoder, "embed_dim", 1)), np.float32)
    row = {u: i for i, u in enumerate(wanted)}
    full[[row[u] for u in utts]] = emb
    return full


def inference_copy(encoder: nn.Module, device: torch.device | str) -> nn.Module:
    """For embedding on a CPU: the exact fp32 inference rewrite (BatchNorm folded, traced;
    :func:`cdino.models.inference.optimize_for_inference`) of a copy of ``encoder``, in
    eval mode — the same embeddings up to float rounding, 1.4–1.9× faster. On other
    devices the encoder itself (bf16 autocast does the work there)."""
    if torch.device(device).type != "cpu":
        return encoder
    from cdino.models.inference import optimize_for_inference

    return optimize_for_inference(encoder, precision="fp32", n_mels=getattr(encoder, "n_mels", None))
