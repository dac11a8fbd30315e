"""Thread policy: affinity respected, CDINO_THREADS / config override, per-rank division,
a governor that follows other processes' load while training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from cdino import threads
from cdino.errors import ConfigError


def test_auto_uses_the_affinity_mask_not_the_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert threads.available_cores() == 3
    assert threads.pick_threads(0, environ={}) == 3


def test_auto_divides_the_cores_between_ranks_on_the_node():
    assert threads.pick_threads(0, environ={"LOCAL_WORLD_SIZE": "2"}, cores=2) == 1
    assert threads.pick_threads(0, environ={"LOCAL_WORLD_SIZE": "4"}, cores=16) == 4
    assert threads.pick_threads(0, environ={"LOCAL_WORLD_SIZE": "3"}, cores=16) == 5
    assert threads.pick_threads(0, environ={"LOCAL_WORLD_SIZE": "8"}, cores=2) == 1  # never 0
    # torchrun's default OMP_NUM_THREADS=1 does not starve the ranks
    assert threads.pick_threads(0, environ={"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
                                cores=16) == 8


def test_auto_leaves_cores_that_other_processes_keep_busy():
    assert threads.pick_threads(0, environ={}, cores=2, busy=0.0) == 2
    assert threads.pick_threads(0, environ={}, cores=2, busy=0.5) == 1  # half a core taken: not free
    assert threads.pick_threads(0, environ={}, cores=2, busy=1.0) == 1
    assert threads.pick_threads(0, environ={}, cores=2, busy=2.0) == 1  # never 0
    assert threads.pick_threads(0, environ={}, cores=8, busy=0.2) == 8  # a little noise is ignored
    assert threads.pick_threads(0, environ={}, cores=8, busy=3.0) == 5
    assert threads.pick_threads(0, environ={"LOCAL_WORLD_SIZE": "2"}, cores=8, busy=1.0) == 4
    # explicit counts are taken as they are
    assert threads.pick_threads(2, environ={}, cores=2, busy=2.0) == 2
    assert threads.pick_threads(0, environ={"CDINO_THREADS": "2"}, cores=2, busy=2.0) == 2


def test_busy_elsewhere_sees_another_process_but_not_this_one():
    cpus = sorted(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spin.pid, {cpus[-1]})
        time.sleep(0.2)
        assert threads.busy_elsewhere(0.3) >= 0.5  # the spinning child (and whatever else runs)
    finally:
        spin.kill()
        spin.wait()


def test_busy_elsewhere_subtracts_this_process(monkeypatch):
    # 0.5 s of wall time on 2 cores: 0.9 s busy in total, 0.6 s of it this process's own
    ticks = iter([(1000, 5000), (1090, 5100)])
    own = iter([10.0, 10.6])
    clock = iter([100.0, 100.5])
    monkeypatch.setattr(threads, "_cpu_ticks", lambda cpus: next(ticks))
    monkeypatch.setattr(threads, "_own_cpu_seconds", lambda children=False: next(own))
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert threads.busy_elsewhere(0.5) == pytest.approx(0.6)  # (0.9 - 0.6) s / 0.5 s


def test_config_value_beats_auto_and_env_beats_both():
    assert threads.pick_threads(3, environ={"LOCAL_WORLD_SIZE": "2"}, cores=2) == 3
    assert threads.pick_threads(3, environ={"CDINO_THREADS": "1"}, cores=2) == 1
    assert threads.pick_threads(0, environ={"CDINO_THREADS": "5", "LOCAL_WORLD_SIZE": "2"}, cores=2) == 5
    # CDINO_THREADS=0 (or blank) means no override
    assert threads.pick_threads(2, environ={"CDINO_THREADS": "0"}, cores=8) == 2
    assert threads.pick_threads(0, environ={"CDINO_THREADS": " "}, cores=8) == 8


@pytest.mark.parametrize("env, configured, needle", [
    ({"CDINO_THREADS": "two"}, 0, "CDINO_THREADS='two'"),
    ({"CDINO_THREADS": "-1"}, 0, "CDINO_THREADS='-1'"),
    ({"LOCAL_WORLD_SIZE": "x"}, 0, "LOCAL_WORLD_SIZE='x'"),
    ({}, -2, "trainer.threads"),
])
def test_bad_values_are_one_line_config_errors(env, configured, needle):
    with pytest.raises(ConfigError) as exc:
        threads.pick_threads(configured, environ=env, cores=2)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_apply_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("CDINO_THREADS", "1")
        assert threads.apply_threads(2) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("CDINO_THREADS")
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        monkeypatch.setattr(threads, "available_cores", lambda: 2)
        monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0.0)
        assert threads.apply_threads(0) == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "busy_elsewhere", lambda: 1.0)  # one core kept busy elsewhere
        assert threads.apply_threads(0) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "busy_elsewhere", lambda: 1 / 0)  # not sampled when explicit
        assert threads.apply_threads(2) == 2
    finally:
        torch.set_num_threads(before)


def test_trainer_applies_the_policy(tiny_data, tmp_path, monkeypatch):
    from dataclasses import replace

    from cdino.config import load_config
    from cdino.data.kaldi_dir import DataDir
    from cdino.methods.dino import DinoMethod
    from cdino.train.trainer import TrainConfig, Trainer

    cfg = load_config(TrainConfig, {
        "encoder": {"name": "ecapa_tdnn_small"},
        "trainer": {"epochs": 1, "global_batch": 8, "progress": False, "tensorboard": False, "threads": 0},
        "dino": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "global_seconds": 0.5,
                 "local_seconds": 0.3, "n_local": 1}})
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "available_cores", lambda: 4)
        monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0.0)  # as on a quiet machine
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this node (no process group needed)
        monkeypatch.delenv("CDINO_THREADS", raising=False)
        trainer = Trainer(cfg, DinoMethod(), DataDir.load(tiny_data), tmp_path / "a")
        assert trainer.threads == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("CDINO_THREADS", "1")
        cfg3 = replace(cfg, trainer=replace(cfg.trainer, threads=3))
        trainer = Trainer(cfg3, DinoMethod(), DataDir.load(tiny_data), tmp_path / "b")
        assert trainer.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_built_in_recipes_never_oversubscribe_the_cores():
    """The demo leaves threads to auto (cores / ranks); the quick demo's tiny model is
    faster on one thread (bench/results/cpu_load*.json), which also fits one rank a core."""
    import yaml

    from cdino.pipeline.recipe_source import builtin_recipe

    demo = yaml.safe_load(builtin_recipe("demo").read_text())
    assert demo["base"]["trainer"].get("threads", 0) == 0
    quick = yaml.safe_load(builtin_recipe("quick").read_text())
    assert quick["base"]["trainer"]["threads"] == 1


IDLE_PROBE = """
import json, os, resource, sys, time
import cdino
assert "torch" not in sys.modules  # the package import must not load torch (OpenMP) first
import torch
n = max(2, len(os.sched_getaffinity(0)))
torch.set_num_threads(n)
x = torch.randn(4_000_000)
for _ in range(20):
    x.exp().sum()  # parallel regions: OpenMP workers exist and have just gone idle
r0 = resource.getrusage(resource.RUSAGE_SELF)
time.sleep(0.5)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"),
                  "idle_cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}))
"""


def _idle_probe(policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", IDLE_PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_cdino_keeps_openmp_waiting_as_the_environment_sets_it():
    # cdino no longer asks for passive waiting (the governor drops to one thread under
    # load instead); a policy the user set still reaches torch's OpenMP runtime: ACTIVE
    # workers spin through the whole sleep, PASSIVE ones do not.
    default = _idle_probe(None)
    assert default["policy"] is None
    active = _idle_probe("ACTIVE")
    assert active["policy"] == "ACTIVE"
    assert active["idle_cpu_s"] > 0.05, active
    passive = _idle_probe("PASSIVE")
    assert passive["idle_cpu_s"] < 0.005, passive


def _fake_machine(monkeypatch, busy_ticks, own_seconds, clock, cores=2):
    """/proc/stat busy ticks, this process's CPU seconds and the clock, one value a sample."""
    ticks = iter([(b, 100000 + 1000 * i) for i, b in enumerate(busy_ticks)])
    own, now = iter(own_seconds), iter(clock)
    monkeypatch.setattr(threads, "_cpu_ticks", lambda cpus: next(ticks))
    monkeypatch.setattr(threads, "_own_cpu_seconds", lambda children=False: next(own))
    monkeypatch.setattr(time, "perf_counter", lambda: next(now))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    monkeypatch.delenv("CDINO_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def test_governor_follows_another_process_and_needs_two_agreeing_samples(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # A sample every 5 s (100 ticks a second). This process uses 10 CPU seconds a
        # sample; another process takes a whole core (500 more ticks) in the samples at
        # t=10 and t=15, and has left by t=20.
        busy = [0, 1000, 2500, 4000, 5000, 6000]
        own = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
        clock = [0.0, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0]  # t=1: a poll inside the interval
        _fake_machine(monkeypatch, busy, own, clock)
        gov = threads.ThreadGovernor(0, interval=5.0)
        assert gov.poll() is None  # t=1: too early, nothing measured
        assert gov.poll() is None  # t=5: no other load
        assert gov.poll() is None  # t=10: a core taken elsewhere, seen once: not yet
        assert gov.poll() == 1 and torch.get_num_threads() == 1  # t=15: seen twice
        assert gov.poll() is None  # t=20: free again, seen once
        assert gov.poll() == 2 and torch.get_num_threads() == 2  # t=25
    finally:
        torch.set_num_threads(before)


def test_governor_is_off_when_the_count_is_explicit(monkeypatch):
    monkeypatch.setenv("CDINO_THREADS", "2")
    assert threads.ThreadGovernor(0).last is None and threads.ThreadGovernor(0).poll() is None
    monkeypatch.delenv("CDINO_THREADS")
    assert threads.ThreadGovernor(3).poll() is None


def test_steal_is_not_another_process(monkeypatch, tmp_path):
    stat = tmp_path / "stat"
    # per cpu: user 100 nice 0 system 50 idle 800 iowait 0 irq 0 softirq 0 steal 50
    stat.write_text("cpu  200 0 100 1600 0 0 0 100\ncpu0 100 0 50 800 0 0 0 50\ncpu1 100 0 50 800 0 0 0 50\n")
    real_open = open
    monkeypatch.setattr("builtins.open",
                        lambda p, *a, **k: real_open(stat if p == "/proc/stat" else p, *a, **k))
    busy, total = threads._cpu_ticks({0, 1})
    assert busy == 300 and total == 2000


def test_the_governor_counts_this_jobs_child_processes_as_its_own():
    # a spinning child (as a DataLoader worker would be): another process for the
    # start-of-stage sample, this job's own for the governor
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        a = threads._own_cpu_seconds(children=True)
        b = threads._own_cpu_seconds()
        deadline = time.monotonic() + 10.0  # on a loaded machine the child gets its CPU later
        while True:
            time.sleep(0.2)
            with_children = threads._own_cpu_seconds(children=True) - a
            alone = threads._own_cpu_seconds() - b
            if with_children - alone >= 0.2 or time.monotonic() > deadline:
                break
        assert with_children - alone >= 0.2, (with_children, alone)  # the child's CPU time
    finally:
        spin.kill()
        spin.wait()

