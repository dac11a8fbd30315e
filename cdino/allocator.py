"""How this process's C heap hands freed memory back: kept for reuse, not returned.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc returns memory to the
kernel as soon as the free space at the top of its heap passes a *trim threshold*, and
serves blocks above a *mmap threshold* with fresh ``mmap`` calls; both start small
(128 KiB) and adapt only upwards, one freed block at a time. A training step allocates
and frees hundreds of MiB of activations, so with the defaults much of that memory is
given back at the end of a step and faulted in again, page by zeroed page, in the next:
the demo made 26 million minor page faults (71 s of system time on 2 cores).

:func:`keep_freed_memory` fixes the mmap threshold at glibc's maximum (32 MiB on 64-bit
systems: larger tensors still get their own mapping, returned when freed) and the trim
threshold at :data:`TRIM_THRESHOLD` (256 MiB of free heap top kept for the next step).
Nothing computed changes, only where memory comes from. Measured on the demo's DINO step
(``bench/bench_malloc.py``, ``bench/results/malloc/``, BENCHMARKS.md): a fifth of
the page faults, a quarter of the system time, ~0.1 GB more peak memory; the step rate moved
less than this machine's run-to-run noise.

It acts on glibc only (Linux; not musl, macOS or Windows), once per process, and can be
turned off with ``CDINO_MALLOC=default`` (glibc's own ``MALLOC_*_`` environment settings
are then the operator's; if any of ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``
or ``MALLOC_TOP_PAD_`` is set, cdino leaves the allocator alone as well).
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV_MALLOC = "CDINO_MALLOC"
#: Free memory at the top of the heap that glibc keeps instead of returning it.
TRIM_THRESHOLD = 256 << 20
#: glibc's largest accepted mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_GLIBC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; ``True`` when it is in effect.

    Idempotent: the first call decides for the whole process.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_MALLOC, "").strip().lower() == "default":
        return False
    if any(name in os.environ for name in _GLIBC_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _applied = ok
    return ok
