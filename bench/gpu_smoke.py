"""A CUDA pass through the real trainer: DINO → C-DINO → one DLG-LC round (audio and
audio-visual) → supervised, on tiny synthetic data, bf16 autocast, fbank/augmentation and
k-means on the GPU. Prints JSON (timings, EERs, device); exits non-zero on any failure.

    python bench/gpu_smoke.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import write_speaker_dir, write_trials_for  # noqa: E402

from cdino.verbs import run_eval  # noqa: E402
from cdino.config import load_config  # noqa: E402
from cdino.train import stages  # noqa: E402
from cdino.train.trainer import TrainConfig  # noqa: E402

BASE = {
    "encoder": {"name": "ecapa_tdnn"},
    "trainer": {"epochs": 2, "global_batch": 16, "log_every": 2, "progress": False, "tensorboard": False,
                "device": "cuda"},
    "optim": {"name": "sgd", "lr": 0.05, "warmup_epochs": 0.5},
    "dino": {"out_dim": 65536, "global_seconds": 1.0, "local_seconds": 0.5},
    "cluster_aware": {"n_clusters": 6, "recluster_every": 1},
    "pseudo": {"rounds": 1, "kmeans": {"n_clusters": 6}, "min_seconds": 1.0, "max_seconds": 1.2},
}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--encoder", default="ecapa_tdnn")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    assert not cuda or torch.cuda.is_available(), "no CUDA device"
    BASE["trainer"]["device"] = args.device
    BASE["encoder"]["name"] = args.encoder
    if not cuda:
        BASE["dino"]["out_dim"] = 1024
    out = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_speaker_dir(tmp / "data", 6, 8, 1.6, visual_dim=16)
        trials = write_trials_for(data, tmp / "trials", n=200)
        cfg = load_config(TrainConfig, BASE)

        def timed(name, fn):
            t0 = time.perf_counter()
            model = fn()
            if cuda:
                torch.cuda.synchronize()
            res = run_eval(model, data, trials, tmp / f"{name}.json", device=args.device, progress=False)
            out[name] = {"seconds": time.perf_counter() - t0, "eer": res["eer"]}
            return model

        timed("dino", lambda: stages.train_dino(cfg, data, tmp / "dino", method="dino"))
        from dataclasses import replace

        cc = replace(cfg, dino=replace(cfg.dino, init=str(tmp / "dino")))
        cmodel = timed("cdino", lambda: stages.train_dino(cc, data, tmp / "cdino", method="cdino"))
        timed("pseudo_r1", lambda: (stages.train_pseudo_rounds(cfg, data, cmodel, tmp / "p"),
                                    tmp / "p" / "round1" / "model")[1])
        mm = load_config(TrainConfig, BASE, overrides=["pseudo.modality=audio_visual"])
        timed("mm_r1", lambda: (stages.train_pseudo_rounds(mm, data, cmodel, tmp / "mm"),
                                tmp / "mm" / "round1" / "model")[1])
        timed("supervised", lambda: stages.train_supervised(cfg, data, tmp / "sup"))
    if cuda:
        out["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
