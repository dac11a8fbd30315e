"""Waveform stores, crop datasets and the global-batch sampler of the trainer.

The input pipeline is a chain of small steps, each swappable:

    store (random access to decoded waveforms)
      → dataset (which utterances and which crops: multi-crop for DINO, one segment
        with a label for AAM training; the cluster-aware variant only swaps the
        *positive sampler* that says which utterance each crop comes from)
      → GlobalBatchSampler (the global batch of a step, split over ranks and
        gradient-accumulation micro-batches; resumable at any step)
      → the trainer moves raw crops to the device, where augmentation and fbank run.

Crop positions are drawn from an RNG seeded by ``(seed, epoch, index)``, so a run
resumed at any step (or with another number of workers) sees the same crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cdino.data.audio import SAMPLE_RATE, SkippedFiles, audio_info, load_audio
from cdino.data.kaldi_dir import DataDir
from cdino.errors import AudioError, DataError


@dataclass
class DataConfig:
    """How training audio is held and cut."""

    store: Literal["memory", "files"] = "memory"  # memory: decode everything once (small corpora); files: read crops from disk
    min_seconds: float = 0.5  # utterances shorter than this are skipped (counted) when loading
    num_workers: int = 0  # DataLoader worker processes per rank


class WaveStore:
    """Random access to the training utterances' waveforms."""

    utts: list[str]

    def __len__(self) -> int:
        return len(self.utts)

    def num_samples(self, i: int) -> int:
        raise NotImplementedError

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        raise NotImplementedError


class MemoryStore(WaveStore):
    """All waveforms decoded once into one int16 array (fast crops, small corpora)."""

    def __init__(self, data: DataDir, min_seconds: float = 0.5, progress: bool = True,
                 skipped: SkippedFiles | None = None) -> None:
        from tqdm import tqdm

        self.skipped = skipped if skipped is not None else SkippedFiles()
        min_samples = max(1, int(min_seconds * SAMPLE_RATE))
        chunks, lengths, utts = [], [], []
        for utt in tqdm(data.utts, desc=f"loading {data.root.name}", disable=not progress,
                        unit="utt", leave=False):
            path = data.wav[utt]
            try:
                wave = load_audio(path, min_samples=min_samples)
            except AudioError as exc:
                self.skipped.add(path, str(exc))
                continue
            chunks.append(np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16))
            lengths.append(len(wave))
            utts.append(utt)
        if not utts:
            raise DataError(f"{data.root}: no usable audio ({self.skipped.summary()})")
        self.utts = utts
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.samples = np.concatenate(chunks)

    def num_samples(self, i: int) -> int:
        return int(self.lengths[i])

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        start = self.offsets[i] + offset
        stop = self.offsets[i] + min(self.lengths[i], offset + n)
        return self.samples[start:stop].astype(np.float32) / 32768.0


class FileStore(WaveStore):
    """Crops read from disk on demand (large corpora); unreadable files are skipped."""

    def __init__(self, data: DataDir, min_seconds: float = 0.5, progress: bool = True,
                 skipped: SkippedFiles | None = None) -> None:
        from tqdm import tqdm

        self.skipped = skipped if skipped is not None else SkippedFiles()
        min_samples = int(min_seconds * SAMPLE_RATE)
        self.paths, self.utts, lengths = [], [], []
        for utt in tqdm(data.utts, desc=f"indexing {data.root.name}", disable=not progress,
                        unit="utt", leave=False):
            path = data.wav[utt]
            try:
                info = audio_info(path)
            except AudioError as exc:
                self.skipped.add(path, str(exc))
                continue
            n = int(round(info.frames * SAMPLE_RATE / info.sample_rate))
            if n < min_samples:
                self.skipped.add(path, f"too short: {n} samples")
                continue
            self.paths.append(path)
            self.utts.append(utt)
            lengths.append(n)
        if not self.utts:
            raise DataError(f"{data.root}: no usable audio ({self.skipped.summary()})")
        self.lengths = np.asarray(lengths, dtype=np.int64)

    def num_samples(self, i: int) -> int:
        return int(self.lengths[i])

    def read(self, i: int, offset: int, n: int) -> np.ndarray:
        try:
            return load_audio(self.paths[i], offset=offset, frames=n)
        except AudioError as exc:
            self.skipped.add(self.paths[i], str(exc))
            return np.zeros(n, dtype=np.float32)


def open_store(data: DataDir, cfg: DataConfig, progress: bool = True) -> WaveStore:
    cls = MemoryStore if cfg.store == "memory" else FileStore
    return cls(data, min_seconds=cfg.min_seconds, progress=progress)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The RNG of one sample of one epoch: independent of workers, ranks and resumption."""
    return np.random.default_rng([seed, epoch, index])


def random_crop(store: WaveStore, i: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``n``-sample crop of utterance ``i``; a shorter utterance is tiled."""
    total = store.num_samples(i)
    if total >= n:
        offset = int(rng.integers(0, total - n + 1))
        wave = store.read(i, offset, n)
        if len(wave) == n:
            return wave
    else:
        wave = store.read(i, 0, total)
    reps = math.ceil(n / max(1, len(wave)))
    return np.tile(wave, reps)[:n] if len(wave) else np.zeros(n, dtype=np.float32)


# A positive sampler says, for an anchor utterance and a crop slot, which utterance the
# crop is cut from. Plain DINO: always the anchor. Cluster-aware DINO: a cluster mate.
PositiveSampler = Callable[[int, int, np.random.Generator], int]


def same_utterance(anchor: int, slot: int, rng: np.random.Generator) -> int:
    return anchor


class MultiCropDataset(Dataset):
    """DINO's multi-crop view: ``n_global`` long and ``n_local`` short crops per anchor."""

    def __init__(self, store: WaveStore, n_global: int, global_samples: int, n_local: int,
                 local_samples: int, seed: int = 0) -> None:
        self.store = store
        self.n_global, self.global_samples = n_global, global_samples
        self.n_local, self.local_samples = n_local, local_samples
        self.seed = seed
        self.epoch = 0
        self.positive: PositiveSampler = same_utterance

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng(self.seed, self.epoch, index)
        g = [random_crop(self.store, self.positive(index, s, rng), self.global_samples, rng)
             for s in range(self.n_global)]
        l = [random_crop(self.store, self.positive(index, self.n_global + s, rng),
                         self.local_samples, rng) for s in range(self.n_local)]
        out = {"index": index, "global": np.stack(g)}
        out["local"] = np.stack(l) if l else np.zeros((0, self.local_samples), np.float32)
        return out


class SegmentDataset(Dataset):
    """One random segment per utterance with its (pseudo or true) class label."""

    def __init__(self, store: WaveStore, labels: np.ndarray, min_samples: int, max_samples: int,
                 seed: int = 0) -> None:
        if len(labels) != len(store):
            raise ValueError("labels must have one entry per stored utterance")
        self.store, self.labels = store, np.asarray(labels, dtype=np.int64)
        self.min_samples, self.max_samples = min_samples, max_samples
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.store)

    def segment_samples(self, step: int) -> int:
        """Segment length of a step: drawn per step so a batch stacks (2–3 s by default)."""
        rng = np.random.default_rng([self.seed, self.epoch, step, 7])
        return int(rng.integers(self.min_samples, self.max_samples + 1))

    def __getitem__(self, item) -> dict:
        index, n = item
        rng = sample_rng(self.seed, self.epoch, index)
        wave = random_crop(self.store, index, n, rng)
        return {"index": index, "wave": wave, "label": self.labels[index]}


class GlobalBatchSampler(Sampler):
    """Yields this rank's micro-batches of each global batch of an epoch, from a given step.

    The epoch's permutation is drawn from ``(seed, epoch)``; global batch ``b`` is
    ``perm[b*G:(b+1)*G]``; rank ``r`` of ``W`` takes its contiguous ``G/W`` share, cut into
    ``accum`` micro-batches. So the samples of a step do not depend on the number of ranks.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, accum: int,
                 seed: int, epoch: int, start_step: int = 0, steps: int | None = None,
                 with_segment: Callable[[int], int] | None = None) -> None:
        if global_batch % (world_size * accum):
            raise ValueError(f"global batch {global_batch} is not divisible by "
                             f"{world_size} ranks x {accum} accumulation steps")
        if n < global_batch:
            raise DataError(f"only {n} training utterances for a global batch of {global_batch}")
        self.n, self.global_batch = n, global_batch
        self.rank, self.world, self.accum = rank, world_size, accum
        self.seed, self.epoch, self.start_step = seed, epoch, start_step
        self.steps = steps if steps is not None else n // global_batch
        self.with_segment = with_segment

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.world * self.accum)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list]:
        rng = np.random.default_rng([self.seed, self.epoch, 12345])
        reps = math.ceil(self.steps * self.global_batch / self.n)
        perm = np.concatenate([rng.permutation(self.n) for _ in range(reps)])
        share = self.global_batch // self.world
        for step in range(self.start_step, self.steps):
            batch = perm[step * self.global_batch:(step + 1) * self.global_batch]
            mine = batch[self.rank * share:(self.rank + 1) * share]
            seg = self.with_segment(step) if self.with_segment else None
            for m in range(self.accum):
                idx = mine[m * self.micro_batch:(m + 1) * self.micro_batch].tolist()
                yield [(i, seg) for i in idx] if seg is not None else idx


def collate(items: Sequence[dict]) -> dict:
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if isinstance(vals[0], np.ndarray):
            out[key] = torch.from_numpy(np.stack(vals))
        else:
            out[key] = torch.as_tensor(np.asarray(vals))
    return out


def make_loader(dataset: Dataset, sampler: GlobalBatchSampler, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      persistent_workers=False)
