"""CPU threads of this process: how many torch uses, and how idle ones wait.

Number of intra-op threads (``pick_threads``), first match wins:

1. ``CDINO_THREADS=N`` in the environment (N >= 1; ``0`` or unset: no override) — for an
   operator who shares the machine with other jobs;
2. ``trainer.threads: N`` in the config (N >= 1; ``0`` = auto);
3. auto: the cores this process may run on (``os.sched_getaffinity``, so ``taskset``,
   cgroups / container CPU sets are respected) divided by the ranks on this node
   (``LOCAL_WORLD_SIZE``, set by ``torchrun``), at least 1 — and no more than the cores
   that are free when a trainer starts: :func:`busy_elsewhere` samples ``/proc/stat``
   for 0.15 s and counts the CPU time other processes use on those cores. A thread on a
   core that another process keeps busy gets half of it, and every parallel region then
   waits for it (the demo's DINO step beside a busy loop: 2 threads 1.05 s, 1 thread
   0.46 s). ``OMP_NUM_THREADS`` is not read here: ``torchrun`` sets it to 1 for every
   rank by default, which would starve CPU ranks; use ``CDINO_THREADS`` instead.

Waiting: OpenMP threads that finish their share of a parallel region spin (burn a core)
before they sleep. When another process holds one of the cores, the spinning thread
steals time from the one it waits for and a step can take many times longer. cdino asks
for passive waiting (``OMP_WAIT_POLICY=PASSIVE``: sleep at once) — see
:func:`prefer_passive_waiting`, called by ``cdino/__init__.py``. OpenMP reads the variable
once, when torch (or faiss) loads it, so it only takes effect when ``cdino`` is imported
before ``torch``, as the ``cdino`` command does; a value already in the environment is
kept (``OMP_WAIT_POLICY=ACTIVE`` restores spinning).

This module imports torch only inside :func:`apply_threads`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_THREADS = "CDINO_THREADS"


def prefer_passive_waiting(environ=None) -> None:
    """Ask OpenMP runtimes loaded later in this process to sleep rather than spin when idle."""
    (os.environ if environ is None else environ).setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _whole(value: str, name: str) -> int:
    from cdino.errors import ConfigError

    try:
        n = int(value.strip())
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"{name}={value!r}: expected a whole number of threads >= 0 (0 = auto)")
    return n


def ranks_on_node(environ: Mapping[str, str] | None = None) -> int:
    """Processes sharing this node's cores: ``LOCAL_WORLD_SIZE`` under torchrun, else 1."""
    env = os.environ if environ is None else environ
    value = env.get("LOCAL_WORLD_SIZE", "")
    return max(1, _whole(value, "LOCAL_WORLD_SIZE")) if value.strip() else 1


def _override(configured: int, env: Mapping[str, str]) -> int:
    """The explicit thread count (CDINO_THREADS, then the config), 0 when auto."""
    from cdino.errors import ConfigError

    value = env.get(ENV_THREADS, "")
    if value.strip():
        n = _whole(value, ENV_THREADS)
        if n > 0:
            return n
    if configured < 0:
        raise ConfigError(f"trainer.threads: {configured} must be >= 0 (0 = auto)")
    return int(configured)


def pick_threads(configured: int = 0, environ: Mapping[str, str] | None = None,
                 cores: int | None = None, busy: float = 0.0) -> int:
    """Intra-op thread count for this process (see the module docstring for the order).

    ``busy``: cores' worth of CPU time other processes use on this process's cores (as
    measured by :func:`busy_elsewhere`); in auto mode a core counts as free when less
    than 70 % of it is taken."""
    env = os.environ if environ is None else environ
    n = _override(configured, env)
    if n > 0:
        return n
    cores = available_cores() if cores is None else cores
    share = max(1, cores // ranks_on_node(env))
    free = int(cores - max(0.0, busy) + 0.3)
    return max(1, min(share, free))


def _cpu_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, from /proc/stat; None if unknown."""
    busy = total = 0
    seen = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *fields = line.split()
                if int(name[3:]) not in cpus:
                    continue
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                v = [int(x) for x in fields[:8]] + [0] * max(0, 8 - len(fields))
                total += sum(v)
                busy += sum(v) - v[3] - v[4]
                seen += 1
    except (OSError, ValueError):
        return None
    return (busy, total) if seen else None


def _own_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def busy_elsewhere(seconds: float = 0.15) -> float:
    """Cores' worth of CPU time that *other* processes used on this process's cores over a
    ``seconds`` sample (this process's own use subtracted); 0.0 where /proc/stat is missing."""
    import time

    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    a, own_a, t_a = _cpu_ticks(cpus), _own_cpu_seconds(), time.perf_counter()
    if a is None:
        return 0.0
    time.sleep(seconds)
    b, own_b, t_b = _cpu_ticks(cpus), _own_cpu_seconds(), time.perf_counter()
    if b is None or b[1] <= a[1]:
        return 0.0
    wall = t_b - t_a
    others = (b[0] - a[0]) / tick - (own_b - own_a)
    return max(0.0, min(float(len(cpus)), others / max(wall, 1e-3)))


def apply_threads(configured: int = 0) -> int:
    """Set torch's intra-op thread count by :func:`pick_threads` (in auto mode after a short
    :func:`busy_elsewhere` sample); returns it."""
    import torch

    explicit = _override(configured, os.environ)
    busy = busy_elsewhere() if explicit == 0 else 0.0
    n = pick_threads(configured, busy=busy)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
