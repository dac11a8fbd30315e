"""Benchmark of cdino's k-means back-ends; prints one JSON object.

CPU: 100k x 192 -> 1000 clusters, 20 iterations, faiss and torch (2 threads).
CUDA (when available): 1.09 M x 192 -> 6000 clusters, 20 iterations, torch fp32 and
bf16 distances (and faiss-gpu when importable).
Data: a Gaussian mixture on the unit sphere (one mean direction per true cluster).

    python bench/bench_kmeans.py [--skip-cpu] [--skip-cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from cdino.metrics import nmi
from cdino.pseudo.kmeans import kmeans


def sphere_mixture(n: int, d: int, k: int, spread: float = 0.25, seed: int = 0):
    """``n`` unit vectors around ``k`` random unit directions; returns (x float32, truth)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    truth = rng.integers(0, k, n)
    x = means[truth] + (spread / np.sqrt(d)) * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), truth


def _time(fn, sync=None):
    if sync:
        sync()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        sync()
    return time.perf_counter() - t0, out


def bench_cpu(threads: int) -> dict:
    torch.set_num_threads(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
    x, truth = sphere_mixture(100_000, 192, 1000)
    out = {"n": 100_000, "dim": 192, "k": 1000, "n_iter": 20, "threads": threads}
    for backend in ("faiss", "torch"):
        sec, (labels, _) = _time(lambda: kmeans(x, 1000, n_iter=20, seed=0, backend=backend))
        out[f"{backend}_seconds"] = round(sec, 3)
        out[f"{backend}_nmi"] = round(nmi(truth, labels), 4)
    return out


def bench_cuda() -> dict:
    dev = torch.device("cuda")
    x, truth = sphere_mixture(1_090_000, 192, 6000)
    xt = torch.from_numpy(x).to(dev)
    out = {"n": 1_090_000, "dim": 192, "k": 6000, "n_iter": 20,
           "gpu": torch.cuda.get_device_name(dev)}
    kmeans(xt[:100_000], 6000, n_iter=2, backend="torch")  # warm-up (kernels, allocator)
    for name, bf16 in (("torch_fp32", False), ("torch_bf16", True)):
        sec, (labels, _) = _time(
            lambda: kmeans(xt, 6000, n_iter=20, seed=0, backend="torch", bf16=bf16),
            torch.cuda.synchronize)
        out[f"{name}_seconds"] = round(sec, 3)
        out[f"{name}_nmi"] = round(nmi(truth, labels), 4)
    try:
        import faiss

        if faiss.get_num_gpus() > 0:
            km = faiss.Kmeans(192, 6000, niter=20, seed=0, spherical=True, gpu=True,
                              max_points_per_centroid=256)
            sec, _ = _time(lambda: km.train(x))
            out["faiss_gpu_seconds"] = round(sec, 3)
    except (ImportError, AttributeError):
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--skip-cuda", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    result = {"torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    if not args.skip_cpu:
        result["cpu"] = bench_cpu(args.threads)
    if not args.skip_cuda and torch.cuda.is_available():
        result["cuda"] = bench_cuda()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
