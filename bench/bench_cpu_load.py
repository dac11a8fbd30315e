"""How much slower the quick demo's DINO stage runs beside a second copy of itself, as JSON.

Runs ``cdino train --method dino`` with the quick recipe's DINO config (training plus the
model-folder export) once alone, then ``--copies`` copies at the same time, and prints one
JSON object: ``alone_s``, ``shared_s`` (mean wall time of the copies), ``slowdown`` =
shared / alone, each copy's time and the machine. On N cores, two jobs that each use all
N cores should take about 2x as long together; far more means threads that spin while
their sibling is descheduled (see ``cdino/threads.py``). Goal: slowdown <= 2.5.

    python bench/bench_cpu_load.py                         # quick corpus generated in a temp folder
    python bench/bench_cpu_load.py --corpus /tmp/h3q/corpus --epochs 1
    python bench/bench_cpu_load.py --omp-wait-policy passive  # sleeping OpenMP workers, for comparison
    python bench/bench_cpu_load.py --set trainer.threads=0   # auto threads (2 alone) and the load governor
    python bench/bench_cpu_load.py --threads 1               # CDINO_THREADS=1 in every job

``--corpus`` takes a corpus folder (with ``train/``) or a training data folder (with
``wav.scp``); ``--set KEY=VALUE`` overrides the DINO config (repeatable), for tiny runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    return {"cpu": _cpu_model(), "cores_available": cores, "cpu_count": os.cpu_count(),
            "load_avg_before": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def dino_config(path: Path, epochs: int | None, overrides: list[str]) -> dict:
    """The quick recipe's DINO stage config, written to ``path`` (progress and TensorBoard off)."""
    import yaml

    from cdino.config import load_config, to_dict
    from cdino.pipeline.method import MethodPipeline as Pipeline, load_recipe
    from cdino.pipeline.recipe_source import builtin_recipe
    from cdino.train.trainer import TrainConfig

    sets = list(overrides) + ["trainer.progress=false", "trainer.tensorboard=false"]
    if epochs is not None:
        sets.append(f"trainer.epochs={epochs}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Pipeline(load_recipe(builtin_recipe("quick")), Path(tmp)).train_config("dino")
    data = to_dict(load_config(TrainConfig, to_dict(base), overrides=sets))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def training_dir(corpus: Path) -> Path:
    if (corpus / "wav.scp").is_file():
        return corpus
    if (corpus / "train" / "wav.scp").is_file():
        return corpus / "train"
    raise SystemExit(f"error: {corpus}: neither a data folder (wav.scp) nor a corpus folder (train/wav.scp)")


def job_env(wait_policy: str, threads: int | None) -> dict:
    env = {**os.environ, "CDINO_NO_PROGRESS": "1"}
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy == "libgomp":  # an invalid (empty) value: GNU OpenMP's own default, spin then sleep
        env["OMP_WAIT_POLICY"] = ""
    elif wait_policy != "default-cdino":
        env["OMP_WAIT_POLICY"] = wait_policy.upper()
    if threads is not None:
        env["CDINO_THREADS"] = str(threads)
    return env


def start_job(data: Path, config: Path, out: Path, env: dict) -> subprocess.Popen:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "cdino.cli", "train", "--method", "dino", "--data", str(data),
           "--out", str(out), "--config", str(config)]
    log = open(out.with_name(out.name + ".log"), "w")
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def run_jobs(n: int, data: Path, config: Path, work: Path, tag: str, env: dict,
             timeout: float = 0.0) -> tuple[list[float], bool]:
    """Start ``n`` copies together; return each one's wall time (seconds) and whether any
    was stopped at ``timeout`` seconds (its time is then the timeout: a lower bound)."""
    t0 = time.perf_counter()
    jobs = [start_job(data, config, work / f"{tag}{i}", env) for i in range(n)]
    times: list[float | None] = [None] * n
    timed_out = False
    try:
        while any(t is None for t in times):
            now = time.perf_counter() - t0
            for i, job in enumerate(jobs):
                if times[i] is not None:
                    continue
                if job.poll() is not None:
                    times[i] = time.perf_counter() - t0
                    if job.returncode != 0:
                        log = (work / f"{tag}{i}.log").read_text()[-2000:]
                        raise SystemExit(f"error: job {tag}{i} failed (exit {job.returncode}):\n{log}")
                elif timeout and now > timeout:
                    job.kill()
                    job.wait()
                    times[i], timed_out = timeout, True
            time.sleep(0.05)
    finally:  # never leave a job running (error, Ctrl-C, SIGTERM)
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.wait()
    return [float(t) for t in times], timed_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="corpus folder (train/) or training data folder; "
                    "default: generate the quick corpus")
    ap.add_argument("--preset", default="quick", choices=["quick", "tiny", "default"],
                    help="corpus preset to generate when --corpus is not given")
    ap.add_argument("--epochs", type=int, help="DINO epochs (default: the quick recipe's)")
    ap.add_argument("--copies", type=int, default=2, help="jobs run at once in the shared run")
    ap.add_argument("--threads", type=int, help="CDINO_THREADS for every job (default: cdino's auto)")
    ap.add_argument("--omp-wait-policy", default="default-cdino",
                    choices=["default-cdino", "passive", "active", "libgomp"],
                    help="OMP_WAIT_POLICY of the jobs (default-cdino: none set, the OpenMP runtime's "
                         "own spin-then-sleep, as cdino leaves it; libgomp: the same, forced by an empty value)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a value of the DINO config (repeatable)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="stop a run's jobs after this many seconds (0: never); their time is then a lower bound")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the jobs are stopped too
    if args.copies < 2:
        raise SystemExit("error: --copies must be at least 2")

    work = args.work or Path(tempfile.mkdtemp(prefix="cdino-load-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        info = machine_info()
        env = job_env(args.omp_wait_policy, args.threads)
        if args.corpus is None:
            corpus = work / "corpus"
            if not (corpus / "train" / "wav.scp").is_file():
                subprocess.run([sys.executable, "-m", "cdino.cli", "corpus", "synth", "--preset",
                                args.preset, "--out", str(corpus)], env=env, cwd=REPO, check=True,
                               stdout=subprocess.DEVNULL)
        else:
            corpus = args.corpus
        data = training_dir(corpus)
        config = work / "dino.yaml"
        cfg = dino_config(config, args.epochs, args.set)
        alone, late_alone = run_jobs(1, data, config, work, "alone", env, args.timeout)
        alone = alone[0]
        shared, late_shared = run_jobs(args.copies, data, config, work, "shared", env, args.timeout)
        shared_s = sum(shared) / len(shared)
        result = {
            "bench": "cpu_load", "alone_s": round(alone, 2), "shared_s": round(shared_s, 2),
            "slowdown": round(shared_s / alone, 3), "goal_slowdown": 2.5,
            "copies": args.copies, "shared_each_s": [round(t, 2) for t in shared],
            "timed_out": {"alone": late_alone, "shared": late_shared},
            "job": {"command": "cdino train --method dino (quick recipe's dino config, model export included)",
                    "data": str(data), "epochs": cfg["trainer"]["epochs"],
                    "global_batch": cfg["trainer"]["global_batch"], "overrides": args.set,
                    "threads_env": env.get("CDINO_THREADS", "auto"),
                    "omp_wait_policy": {None: "libgomp default (cdino sets none)", "": "libgomp default"}.get(
                        env.get("OMP_WAIT_POLICY"), env.get("OMP_WAIT_POLICY"))},
            "machine": {**info, "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        }
        print(json.dumps(result))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
