"""Process-group set-up and collectives: one CPU process, or many ranks under ``torchrun``
(NCCL / gloo), and the device each process works on.

A base module (it imports nothing from cdino but :mod:`cdino.errors`): methods, training,
evaluation and the user API all use it, and in one process every collective is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from cdino.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEFAULT_TIMEOUT_S = 1800.0  # process-group timeout: how long a collective waits for a slow rank


def dist_timeout_s() -> float:
    """The process-group timeout in seconds: ``CDINO_DIST_TIMEOUT`` or 30 minutes.

    Every rank shares the long steps (embedding, training), so a rank waits in a
    collective only for work that cannot be split (k-means on rank 0, writing a report);
    raise it for very large clustering jobs on a slow CPU."""
    raw = os.environ.get("CDINO_DIST_TIMEOUT", "")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"CDINO_DIST_TIMEOUT: expected seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"CDINO_DIST_TIMEOUT: must be > 0, got {raw!r}")
    return value


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (if any):
    NCCL for CUDA devices, gloo for CPUs; timeout from :func:`dist_timeout_s`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=dist_timeout_s()))
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def all_gather_stack(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` stacked in rank order, ``(world_size, *t.shape)``, on every rank
    (``t`` with a leading axis of 1 in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)
    return t.unsqueeze(0)


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The torch device for ``device``: ``"auto"`` is CUDA when present, else the CPU;
    ``"cuda"`` and ``"auto"`` take this process's GPU (``LOCAL_RANK``) under torchrun.
    Asking for CUDA where there is none, or for a GPU this machine lacks, is a
    :class:`ConfigError` (no silent fall-back to the CPU)."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device '{device}': not a device name (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}': CUDA is not available on this machine "
                              "(use device 'cpu', or 'auto' for CUDA only where present)")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}': this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)")
    return dev


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def is_main() -> bool:
    """True in a single process and on rank 0 of a process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shared_by_rank0(compute: Callable[[], object]) -> object:
    """``compute()`` on rank 0 only, its result sent to every rank (torch.distributed, when
    a process group is up; otherwise just ``compute()``). Every rank must call this."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
