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

While a trainer runs, :class:`ThreadGovernor` repeats that measurement every few seconds
(auto mode only) and moves the count down when another process takes a core and back up
when it leaves; a new count must be seen twice in a row before it is applied. CPU steal
(time the hypervisor gives to other machines) is not counted as another process: the
cores are still this machine's, and spreading the work over both still pays.

Waiting: OpenMP threads that finish their share of a parallel region spin briefly before
they sleep (libgomp's default). Alone, that is what makes two threads pay: the demo's
DINO step on 2 idle cores took 0.36 s with it against 0.65 s with passive waiting
(``OMP_WAIT_POLICY=PASSIVE``, sleep at once), no faster than one thread (0.60 s;
``bench/results/thread_policy.json``). When another process holds one of the cores, a
spinning thread steals time from the one it waits for, and a step can take many times
longer. cdino therefore keeps the default waiting and avoids the stall by the thread
count: the governor drops to one thread, which never waits for a sibling, once another
process takes a core (with a busy loop on the machine: 0.70 s a step, against 0.58 s with
passive waiting). ``OMP_WAIT_POLICY`` set in the environment is left as it is (PASSIVE
suits a machine whose load changes faster than the governor's interval).

This module imports torch only inside functions (:func:`apply_threads`, :meth:`ThreadGovernor.poll`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_THREADS = "CDINO_THREADS"


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
                # user nice system idle iowait irq softirq steal (guest time is inside user);
                # steal is other machines' time, not a process here: not counted as busy
                v = [int(x) for x in fields[:8]] + [0] * max(0, 8 - len(fields))
                total += sum(v)
                busy += sum(v) - v[3] - v[4] - v[7]
                seen += 1
    except (OSError, ValueError):
        return None
    return (busy, total) if seen else None


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's live children (DataLoader workers are this job too)."""
    total = 0.0
    try:
        tick = os.sysconf("SC_CLK_TCK")
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                for pid in f.read().split():
                    try:
                        with open(f"/proc/{pid}/stat") as g:
                            fields = g.read().rsplit(")", 1)[1].split()
                        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
                    except (OSError, ValueError, IndexError):
                        continue
    except (OSError, ValueError, AttributeError):
        return 0.0
    return total


def _own_cpu_seconds(children: bool = False) -> float:
    """This process's CPU seconds; with ``children``, its live children's too (the
    governor's view: DataLoader workers are this job, started after the first sample)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + (_children_cpu_seconds() if children else 0.0)


def _sample(cpus: set[int], children: bool = False, now: float | None = None) -> tuple[tuple[int, int] | None, float, float]:
    import time

    return _cpu_ticks(cpus), _own_cpu_seconds(children), time.perf_counter() if now is None else now


def _others(a, b, cpus: set[int]) -> float:
    """Cores' worth of CPU time other processes used on ``cpus`` between two samples."""
    (ta, own_a, t_a), (tb, own_b, t_b) = a, b
    if ta is None or tb is None or tb[1] <= ta[1]:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = (tb[0] - ta[0]) / tick - (own_b - own_a)
    return max(0.0, min(float(len(cpus)), others / max(t_b - t_a, 1e-3)))


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def busy_elsewhere(seconds: float = 0.15) -> float:
    """Cores' worth of CPU time that *other* processes used on this process's cores over a
    ``seconds`` sample (this process's own use subtracted); 0.0 where /proc/stat is missing."""
    import time

    cpus = _affinity()
    if cpus is None:
        return 0.0
    a = _sample(cpus)
    if a[0] is None:
        return 0.0
    time.sleep(seconds)
    return _others(a, _sample(cpus), cpus)


class ThreadGovernor:
    """Follows other processes' load while a long loop runs (auto mode only).

    Call :meth:`poll` once per step: every ``interval`` seconds it measures the CPU time
    other processes took on this process's cores since the last measurement (no sleep),
    re-picks the count with :func:`pick_threads` and applies a new count once two
    measurements in a row agree on it. Returns the count it applied, else None.
    """

    def __init__(self, configured: int = 0, interval: float = 5.0, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.configured, self.interval = configured, interval
        self.cpus = _affinity() if _override(configured, env) == 0 else None
        self.last = _sample(self.cpus, children=True) if self.cpus else None
        self.pending: int | None = None

    def poll(self) -> int | None:
        import time

        if self.last is None:
            return None
        t = time.perf_counter()
        if t - self.last[2] < self.interval:
            return None
        import torch

        now = _sample(self.cpus, children=True, now=t)
        busy = _others(self.last, now, self.cpus)
        self.last = now
        n = pick_threads(self.configured, cores=len(self.cpus), busy=busy)
        if n == torch.get_num_threads():
            self.pending = None
            return None
        if self.pending != n:
            self.pending = n
            return None
        torch.set_num_threads(n)
        self.pending = None
        return n


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
