"""The heap keeps freed memory for reuse: a churn of tensor allocations stops faulting
pages in once it has run once; ``CDINO_MALLOC=default`` and glibc's own settings leave
the allocator as it is. Each case runs in a fresh process (the setting is per process)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

CHURN = r"""
import json, random, resource
import torch
from cdino.allocator import keep_freed_memory

applied = keep_freed_memory()

def churn():  # the shape of a training step: many tensors of many sizes, all freed at the end
    rng = random.Random(0)
    for _ in range(40):
        xs = [torch.ones(rng.randint(1, 4 << 20)) for _ in range(12)]  # up to 16 MiB each
        del xs

churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(json.dumps({"applied": applied, "again": keep_freed_memory(),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the tuning acts on glibc's malloc only")


def _run(**env_changes) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CDINO_MALLOC", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_tensors_are_reused_without_new_page_faults():
    tuned, default = _run(), _run(CDINO_MALLOC="default")
    assert tuned["applied"] and tuned["again"]  # idempotent: the second call reports the same
    assert not default["applied"]
    # 40 x 12 tensors of up to 16 MiB: glibc's defaults give pages back and fault them in
    # again (~70,000 faults here); with the tuning the second churn reuses the first's heap.
    assert default["faults"] > 20_000
    assert tuned["faults"] * 10 < default["faults"]


@glibc_only
def test_an_operators_glibc_setting_is_left_alone():
    assert not _run(MALLOC_TRIM_THRESHOLD_="131072")["applied"]
