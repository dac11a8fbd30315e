"""Start-up, memory and the per-epoch CPU steps at VoxCeleb2 scale; prints one JSON object.

    python bench/bench_scale.py --utterances 1092009 [--workers 2] [--kmeans-iters 20] [--skip-kmeans]

In a temporary folder it writes a data folder of ``--utterances`` entries (``wav.scp``,
``utt2spk``, ``spk2utt``, ``utt2dur``: the files ``cdino prepare voxceleb`` writes; 5994
speakers as in VoxCeleb2 dev) whose paths point at a few real 8-second wav files, then
measures, in this process:

- ``startup_s``: what one rank does before its first step: ``DataDir.load`` +
  ``open_store`` (files: lengths from ``utt2dur``) + the DINO dataset + the trainer's
  ``BatchFeed`` up to the first micro-batch (its ``--workers`` DataLoader workers started);
  the parts are in ``startup_parts_s``;
- ``rss_gb``: resident memory added by that start-up (after importing torch, so beyond
  the libraries and the model); ``worker_uss_gb``: private memory of each worker;
- ``gate_fit_s``: ``fit_loss_gate`` on one loss per utterance from a 2-component mixture;
- ``kmeans_s``: CPU k-means (``cdino.pseudo.kmeans.kmeans``, faiss when importable)
  of ``--utterances`` x 192 embeddings into 6000 clusters, ``--kmeans-iters`` iterations
  (the library default, 20); minutes on a small CPU — ``--skip-kmeans`` leaves it out.

Goals (issue 11): start-up <= 60 s, memory <= 4 GB, gate fit <= 5 s.
Results: bench/results/scale.json (command above, full size, 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SR = 16000
SPEAKERS = 5994


def rss_bytes(pid: str | int = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def uss_bytes(pid: int) -> int:
    """Private (unshared) memory of a process."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def write_folder(root: Path, n: int, n_files: int = 16, seconds: float = 8.0) -> dict:
    """A data folder of ``n`` utterances spread over 5994 speakers, pointing at ``n_files`` wavs."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True)
    files = []
    for j in range(n_files):
        path = root / "wav" / f"f{j:02d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR,
                 subtype="PCM_16")
        files.append(str(path))
    spk_of = np.sort(rng.integers(0, SPEAKERS, n))
    utts = [f"id{s:05d}/v{i % 97:03d}/{i:07d}" for i, s in enumerate(spk_of.tolist())]
    dur = f"{seconds:g}"
    with open(root / "wav.scp", "w") as f:
        f.writelines(f"{u} {files[i % n_files]}\n" for i, u in enumerate(utts))
    with open(root / "utt2spk", "w") as f:
        f.writelines(f"{u} {u[:7]}\n" for u in utts)
    with open(root / "utt2dur", "w") as f:
        f.writelines(f"{u} {dur}\n" for u in utts)
    spk2utt: dict[str, list[str]] = {}
    for u in utts:
        spk2utt.setdefault(u[:7], []).append(u)
    with open(root / "spk2utt", "w") as f:
        f.writelines(f"{s} {' '.join(us)}\n" for s, us in spk2utt.items())
    return {"write_s": time.perf_counter() - t0,
            "folder_mb": sum(p.stat().st_size for p in root.iterdir() if p.is_file()) / 2**20}


def startup(root: Path, workers: int, global_batch: int, world: int) -> dict:
    from cdino.data.kaldi_dir import DataDir
    from cdino.data.loader import BatchFeed, GlobalBatchSampler, MultiCropDataset
    from cdino.data.stores import DataConfig, open_store
    from cdino.methods.dino import DinoConfig

    dc = DinoConfig()
    base = rss_bytes()
    parts = {}
    t0 = time.perf_counter()
    data = DataDir.load(root)
    parts["data_dir_load"] = time.perf_counter() - t0
    t = time.perf_counter()
    store = open_store(data, DataConfig(store="files", num_workers=workers), progress=False)
    parts["open_store"] = time.perf_counter() - t
    t = time.perf_counter()
    ds = MultiCropDataset(store, dc.n_global, int(dc.global_seconds * SR), dc.n_local,
                          int(dc.local_seconds * SR), seed=0)
    steps = len(ds) // global_batch
    feed = BatchFeed(ds, lambda s: GlobalBatchSampler(len(ds), global_batch, 0, world, 1, 0, s // steps,
                                                      start_step=s % steps, steps=steps,
                                                      end_step=10 * steps), 1, num_workers=workers)
    feed.seek(0)
    parts["dataset_and_loader"] = time.perf_counter() - t
    t = time.perf_counter()
    batch = feed.next()
    parts["first_batch"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    pids = [w.pid for w in getattr(feed._it, "_workers", [])]
    out = {"startup_s": total, "startup_parts_s": parts,
           "rss_gb": (rss_bytes() - base) / 2**30, "rss_total_gb": rss_bytes() / 2**30,
           "worker_uss_gb": [uss_bytes(p) / 2**30 for p in pids],
           "micro_batch": int(batch["global"].shape[0]), "global_crop_shape": list(batch["global"].shape),
           "store_utterances": len(store), "skipped": store.skipped.count}
    feed.close()
    return out


def gate_fit(n: int) -> dict:
    from cdino.pseudo.loss_gate import fit_loss_gate

    rng = np.random.default_rng(1)
    noisy = rng.random(n) < 0.3  # 30 % wrong pseudo labels: larger losses
    losses = np.where(noisy, rng.lognormal(np.log(6.0), 0.35, n), rng.lognormal(np.log(1.0), 0.5, n))
    t0 = time.perf_counter()
    fit = fit_loss_gate(losses.astype(np.float32))
    dt = time.perf_counter() - t0
    return {"gate_fit_s": dt, "gate_threshold": fit.threshold, "gate_iters": fit.n_iter,
            "gate_recall": float((losses[noisy] > fit.threshold).mean()),
            "gate_precision": float(noisy[losses > fit.threshold].mean())}


def kmeans_cpu(n: int, iters: int) -> dict:
    from cdino.pseudo.kmeans import kmeans

    rng = np.random.default_rng(2)
    k, d = 6000, 192
    means = rng.standard_normal((k, d)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    x = means[rng.integers(0, k, n)]
    x += (0.25 / np.sqrt(d)) * rng.standard_normal((n, d)).astype(np.float32)
    t0 = time.perf_counter()
    labels, _ = kmeans(x, k, n_iter=iters, seed=0, device="cpu")
    return {"kmeans_s": time.perf_counter() - t0, "kmeans_iters": iters,
            "kmeans_clusters_used": int(len(np.unique(labels)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, default=1092009)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    ap.add_argument("--global-batch", type=int, default=256)
    ap.add_argument("--world", type=int, default=8, help="ranks sharing the global batch (this is rank 0)")
    ap.add_argument("--threads", type=int, default=2)
    from cdino.pseudo.kmeans import KMeansConfig

    ap.add_argument("--kmeans-iters", type=int, default=KMeansConfig().n_iter)
    ap.add_argument("--skip-kmeans", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("CDINO_NO_PROGRESS", "1")
    out = {"utterances": args.utterances, "workers": args.workers, "global_batch": args.global_batch,
           "world": args.world, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="cdino-scale-") as tmp:
        out.update(write_folder(Path(tmp) / "vox2_dev", args.utterances))
        out.update(startup(Path(tmp) / "vox2_dev", args.workers, args.global_batch, args.world))
    out.update(gate_fit(args.utterances))
    if not args.skip_kmeans:
        out.update(kmeans_cpu(args.utterances, args.kmeans_iters))
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["load_avg_after"] = os.getloadavg()
    out["goals_met"] = {"startup_le_60s": out["startup_s"] <= 60, "rss_le_4gb": out["rss_gb"] <= 4,
                        "gate_fit_le_5s": out["gate_fit_s"] <= 5}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
