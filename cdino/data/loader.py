"""Crop datasets and the global-batch sampler of the trainer.

The input pipeline is a chain of small steps, each swappable:

    store (:mod:`cdino.data.stores`: random access to decoded waveforms in memory, audio
      files or tar shards)
      → dataset (which utterances and which crops: multi-crop for DINO, one segment
        with a label for AAM training; the cluster-aware variant only swaps the
        *positive sampler* that says which utterance each crop comes from)
      → GlobalBatchSampler (the global batch of every step from a start step to the end
        of the run, split over ranks and gradient-accumulation micro-batches)
      → BatchFeed (one DataLoader for the whole run: its workers live across epochs)
      → the trainer moves raw crops to the device, where augmentation and fbank run.

Crop positions are drawn from an RNG seeded by ``(seed, epoch, index)`` and the sampler
hands every index to the workers together with its epoch, so a run resumed at any step
(or with another number of workers) sees the same crops. A file that cannot be read
inside a worker is replaced by another utterance drawn from the same keyed RNG, and
named in the batch (``batch["bad"]``) for the trainer to log.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cdino.data.stores import WaveStore
from cdino.errors import AudioError, DataError

log = logging.getLogger(__name__)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The RNG of one sample of one epoch: independent of workers, ranks and resumption."""
    return np.random.default_rng([seed, epoch, index])


def random_crop(store: WaveStore, i: int, n: int, rng: np.random.Generator,
                stratum: tuple[int, int] | None = None) -> np.ndarray:
    """A random ``n``-sample crop of utterance ``i``; a shorter utterance is tiled.

    ``stratum=(k, m)`` draws the start in the k-th of m equal parts of the possible starts,
    so the m crops of one utterance come from its successive parts and share less of it.
    An unreadable file raises ``AudioError`` with ``.bad = (name, reason)`` attached.
    """
    total = store.num_samples(i)
    try:
        if total >= n:
            span = total - n + 1
            if stratum is None:
                offset = int(rng.integers(0, span))
            else:
                offset = min(span - 1, int((stratum[0] + rng.random()) / stratum[1] * span))
            wave = store.read(i, offset, n)
            if len(wave) == n:
                return wave
        else:
            wave = store.read(i, 0, total)
    except AudioError as exc:
        name = store.name(i)
        exc.bad = (name, str(exc).removeprefix(f"{name}: "))
        raise
    reps = math.ceil(n / max(1, len(wave)))
    return np.tile(wave, reps)[:n] if len(wave) else np.zeros(n, dtype=np.float32)


#: Unreadable utterances in a row after which a sample gives up (storage is gone, not a file).
MAX_REPLACEMENTS = 16


def replacement_index(seed: int, epoch: int, index: int, attempt: int, n: int) -> int:
    """The utterance that stands in for unreadable ``index`` (never ``index`` itself),
    a function of (seed, epoch, index, attempt) only."""
    if n < 2:
        return index
    rng = np.random.default_rng([seed, epoch, index, 1_000_003 + attempt])
    return (index + 1 + int(rng.integers(n - 1))) % n


def _with_replacement(dataset, index: int, epoch: int, make: Callable[[int, int], dict]) -> dict:
    """``make(index, epoch)``; when a file cannot be read, the same for a replacement
    utterance (deterministic), with the files that failed listed in ``item["bad"]``."""
    bad: list[tuple[str, str]] = []
    current = index
    for attempt in range(MAX_REPLACEMENTS + 1):
        try:
            item = make(current, epoch)
        except AudioError as exc:
            bad.append(getattr(exc, "bad", None) or (str(exc), "unreadable"))
            current = replacement_index(dataset.seed, epoch, index, attempt, len(dataset))
            continue
        item["bad"] = bad
        return item
    raise DataError(f"{MAX_REPLACEMENTS + 1} training utterances in a row could not be read "
                    f"(last: {bad[-1][0]}: {bad[-1][1]}); is the data storage reachable?")


def _index_epoch(item, default_epoch: int) -> tuple[int, int]:
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), default_epoch


# A positive sampler says, for an anchor utterance and a crop slot, which utterance the
# crop is cut from. Plain DINO: always the anchor. Cluster-aware DINO: a cluster mate.
PositiveSampler = Callable[[int, int, np.random.Generator], int]


def same_utterance(anchor: int, slot: int, rng: np.random.Generator) -> int:
    return anchor


class MultiCropDataset(Dataset):
    """DINO's multi-crop view: ``n_global`` long and ``n_local`` short crops per anchor.

    Items are keyed by ``index`` (epoch: ``self.epoch``) or ``(index, epoch)``.
    """

    def __init__(self, store: WaveStore, n_global: int, global_samples: int, n_local: int,
                 local_samples: int, seed: int = 0, stratified: bool = False) -> None:
        self.store = store
        self.n_global, self.global_samples = n_global, global_samples
        self.n_local, self.local_samples = n_local, local_samples
        self.seed = seed
        self.stratified = stratified  # global crop k of an utterance from the k-th part of it
        self.epoch = 0
        self.positive: PositiveSampler = same_utterance

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, item) -> dict:
        index, epoch = _index_epoch(item, self.epoch)
        return _with_replacement(self, index, epoch, self._crops)

    def _crops(self, index: int, epoch: int) -> dict:
        rng = sample_rng(self.seed, epoch, index)
        g = [random_crop(self.store, self.positive(index, s, rng), self.global_samples, rng,
                         (s, self.n_global) if self.stratified else None) for s in range(self.n_global)]
        l = [random_crop(self.store, self.positive(index, self.n_global + s, rng),
                         self.local_samples, rng) for s in range(self.n_local)]
        out = {"index": index, "global": np.stack(g)}
        out["local"] = np.stack(l) if l else np.zeros((0, self.local_samples), np.float32)
        return out


class SegmentDataset(Dataset):
    """One random segment per utterance with its (pseudo or true) class label.

    Items are keyed by ``(index, n_samples)`` (epoch: ``self.epoch``) or
    ``(index, epoch, n_samples)``.
    """

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

    def segment_samples(self, step: int, epoch: int | None = None) -> int:
        """Segment length of a step of an epoch: drawn per step so a batch stacks (2–3 s by
        default)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, step, 7])
        return int(rng.integers(self.min_samples, self.max_samples + 1))

    def __getitem__(self, item) -> dict:
        if len(item) == 3:
            index, epoch, n = int(item[0]), int(item[1]), int(item[2])
        else:
            (index, n), epoch = (int(item[0]), int(item[1])), self.epoch

        def segment(i: int, e: int) -> dict:
            wave = random_crop(self.store, i, n, sample_rng(self.seed, e, i))
            return {"index": i, "wave": wave, "label": self.labels[i]}

        return _with_replacement(self, index, epoch, segment)


class GlobalBatchSampler(Sampler):
    """Yields this rank's micro-batches of each global batch, from a start step onwards.

    Epoch ``e``'s permutation is drawn from ``(seed, e)``; its global batch ``b`` is
    ``perm[b*G:(b+1)*G]``; rank ``r`` of ``W`` takes its contiguous ``G/W`` share, cut into
    ``accum`` micro-batches. So the samples of a step do not depend on the number of ranks.
    It starts at step ``start_step`` of ``epoch`` and runs to the global step ``end_step``
    (default: the end of that epoch), across epoch boundaries. Each micro-batch is a
    list of ``(index, epoch)`` keys, or ``(index, epoch, segment_samples)`` with
    ``with_segment(step_in_epoch, epoch)``: workers need no per-epoch state.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, accum: int,
                 seed: int, epoch: int = 0, start_step: int = 0, steps: int | None = None,
                 with_segment: Callable[[int, int], int] | None = None, *,
                 end_step: int | None = None) -> None:
        if global_batch % (world_size * accum):
            raise ValueError(f"global batch {global_batch} is not divisible by "
                             f"{world_size} ranks x {accum} accumulation steps")
        if n < global_batch:
            raise DataError(f"only {n} training utterances for a global batch of {global_batch}")
        self.n, self.global_batch = n, global_batch
        self.rank, self.world, self.accum = rank, world_size, accum
        self.seed, self.epoch, self.start_step = seed, epoch, start_step
        self.steps = steps if steps is not None else n // global_batch
        self.end_step = end_step if end_step is not None else (epoch + 1) * self.steps
        self.with_segment = with_segment

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.world * self.accum)

    def __len__(self) -> int:
        return max(0, self.end_step - (self.epoch * self.steps + self.start_step)) * self.accum

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 12345])
        reps = math.ceil(self.steps * self.global_batch / self.n)
        return np.concatenate([rng.permutation(self.n) for _ in range(reps)])

    def __iter__(self) -> Iterator[list]:
        share = self.global_batch // self.world
        step = self.epoch * self.steps + self.start_step
        epoch, perm = -1, None
        while step < self.end_step:
            if step // self.steps != epoch:
                epoch = step // self.steps
                perm = self._permutation(epoch)
            s = step - epoch * self.steps
            batch = perm[s * self.global_batch:(s + 1) * self.global_batch]
            mine = batch[self.rank * share:(self.rank + 1) * share]
            seg = self.with_segment(s, epoch) if self.with_segment else None
            for m in range(self.accum):
                idx = mine[m * self.micro_batch:(m + 1) * self.micro_batch].tolist()
                yield [(i, epoch, seg) for i in idx] if seg is not None else [(i, epoch) for i in idx]
            step += 1


def collate(items: Sequence[dict]) -> dict:
    """Stack the items' arrays; ``bad`` (files replaced in them) becomes one flat list."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if key == "bad":
            out[key] = [entry for v in vals for entry in v]
        elif isinstance(vals[0], np.ndarray):
            out[key] = torch.from_numpy(np.stack(vals))
        else:
            out[key] = torch.as_tensor(np.asarray(vals))
    return out


def make_loader(dataset: Dataset, sampler: GlobalBatchSampler, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      prefetch_factor=2 if num_workers > 0 else None)


def _worker_state_key(dataset: Dataset) -> bytes | None:
    """A digest of what workers copy from the dataset besides its store and ``epoch`` (e.g.
    the positive sampler, labels); ``None`` when it cannot be pickled."""
    try:
        state = {k: v for k, v in vars(dataset).items() if k not in ("store", "epoch")}
        return hashlib.blake2b(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL),
                               digest_size=16).digest()
    except Exception:  # unpicklable state: assume it changed
        return None


class BatchFeed:
    """The trainer's micro-batches from one DataLoader for all the remaining steps.

    ``sampler_from(step)`` makes the :class:`GlobalBatchSampler` from global step ``step``
    to the end of the run; its workers then live across epochs. :meth:`seek` is called at
    each epoch start (after ``on_epoch_start``): the loader is only made again when the
    step is not the next one or the dataset changed since its workers copied it (e.g.
    C-DINO's new clusters), so batches read ahead with stale state are never used.
    ``next()`` returns a batch without its ``bad`` list; :meth:`take_bad` returns the
    replaced files, once each, over all ranks.
    """

    def __init__(self, dataset: Dataset, sampler_from: Callable[[int], GlobalBatchSampler],
                 accum: int, num_workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset, self.sampler_from, self.accum = dataset, sampler_from, accum
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._it: Iterator | None = None
        self._key: bytes | None = None
        self._step = self._micro = -1
        self._bad: list[tuple[str, str]] = []
        self._seen: set[str] = set()
        self.replacements = 0  # bad reads replaced on this rank (a file may count often)
        self.loaders_made = 0

    def seek(self, step: int) -> None:
        key = _worker_state_key(self.dataset)
        if (self._it is None or step != self._step or self._micro != 0 or key is None
                or key != self._key):
            self.close()
            self._it = iter(make_loader(self.dataset, self.sampler_from(step), self.num_workers,
                                        self.pin_memory))
            self.loaders_made += 1
            self._step, self._micro = step, 0
        self._key = key

    def next(self) -> dict:
        batch = next(self._it)
        self._micro += 1
        if self._micro == self.accum:
            self._step, self._micro = self._step + 1, 0
        bad = batch.pop("bad", None)
        if bad:
            self.replacements += len(bad)
            self._bad.extend((str(p), str(r)) for p, r in bad)
        return batch

    def take_bad(self) -> list[tuple[str, str]]:
        """Files replaced since the last call and not reported before, gathered from all
        ranks (a collective under torch.distributed: every rank calls it together)."""
        import torch.distributed as dist

        mine, self._bad = self._bad, []
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, mine)
            mine = [entry for part in parts for entry in part]
        new = []
        for path, reason in mine:
            if path not in self._seen:
                self._seen.add(path)
                new.append((path, reason))
        return new

    def close(self) -> None:
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
