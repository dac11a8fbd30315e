"""The VoxCeleb recipe's shape, end to end, on a tiny fake VoxCeleb tree built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from cdino.cli import main
from conftest import make_voice

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "voxceleb" / "voxceleb.yaml"


def _speaker(rng, k):
    return 95 + 23 * k, [480 + 140 * k, 1450 + 160 * k, 2500 + 80 * k]


def fake_voxceleb(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    vox1, vox2 = root / "VoxCeleb1", root / "VoxCeleb2"
    k = 0
    for spk in ("id00012", "id00015", "id00020", "id00031"):
        f0, fm = _speaker(rng, k)
        k += 1
        for vid in ("v1", "v2"):
            for n in (1, 2, 3):
                p = vox2 / "dev" / "wav" / spk / vid / f"{n:05d}.wav"
                p.parent.mkdir(parents=True, exist_ok=True)
                sf.write(p, make_voice(rng, f0, fm, 1.4), 16000, subtype="PCM_16")
    test_utts = []
    for spk in ("id10270", "id10271", "id10272"):
        f0, fm = _speaker(rng, k)
        k += 1
        for vid in ("a", "b"):
            for n in (1, 2):
                rel = f"{spk}/{vid}/{n:05d}.wav"
                p = vox1 / "wav" / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                sf.write(p, make_voice(rng, f0, fm, 1.2), 16000, subtype="PCM_16")
                test_utts.append(rel)
    lines = []
    for i, a in enumerate(test_utts):
        for b in test_utts[i + 1:]:
            lines.append(f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}")
    (vox1 / "veri_test2.txt").write_text("\n".join(lines) + "\n")
    return vox1, vox2


def test_voxceleb_recipe_runs_on_a_fake_tree(tmp_path):
    vox1, vox2 = fake_voxceleb(tmp_path)
    data = tmp_path / "DATA"
    assert main(["prepare", "voxceleb", "--vox1", str(vox1), "--vox2", str(vox2), "--out", str(data)]) == 0
    assert (data / "vox1" / "trials_O").is_file()
    tiny = {
        "data.train": data / "vox2_dev", "data.test": data / "vox1", "data.trials": data / "vox1" / "trials_O",
        "base.encoder": "{name: ecapa_tdnn_small}",
        "base.trainer.global_batch": 8, "base.trainer.progress": "false", "base.trainer.tensorboard": "false",
        "base.trainer.threads": 1, "base.trainer.checkpoint_every": 0,
        "base.data.num_workers": 0, "base.noise.musan": "null", "base.noise.rirs": "null",
        "dino.trainer.epochs": 1, "dino.dino.out_dim": 64, "dino.dino.hidden_dim": 32,
        "dino.dino.bottleneck_dim": 16, "dino.dino.global_seconds": 0.8, "dino.dino.local_seconds": 0.4,
        "cdino.trainer.epochs": 1, "cdino.dino.out_dim": 64, "cdino.dino.hidden_dim": 32,
        "cdino.dino.bottleneck_dim": 16, "cdino.dino.global_seconds": 0.8, "cdino.dino.local_seconds": 0.4,
        "cdino.cluster_aware.n_clusters": 4,
        "pseudo.trainer.epochs": 2, "pseudo.trainer.global_batch": 8, "pseudo.pseudo.rounds": 1, "pseudo.pseudo.kmeans.n_clusters": 4,
        "pseudo.pseudo.min_seconds": 0.8, "pseudo.pseudo.max_seconds": 1.0,
        "pseudo.pseudo.margin_warmup_epochs": 1, "pseudo.pseudo.gate.warmup_epochs": 1,
        "pseudo.pseudo.correction.start_epoch": 1, "pseudo.pseudo.large_margin_epochs": 1,
        "pseudo.pseudo.large_margin_seconds": 1.0, "pseudo.optim.warmup_epochs": 0,
        "supervised.trainer.epochs": 1, "supervised.optim.warmup_epochs": 0, "bootstrap": 50,
    }
    sets = []
    for k, v in tiny.items():
        sets += ["--set", f"{k}={v}"]
    exp = tmp_path / "exp"
    assert main(["run", str(RECIPE), "--out", str(exp), *sets]) == 0
    results = json.loads((exp / "results.json").read_text())
    names = [s["name"] for s in results["stages"]]
    assert names == ["dino", "cdino", "pseudo_r1"]
    assert results["final"] == "pseudo_r1" and (exp / "model" / "config.yaml").is_file()
    assert results["test"]["n_trials"] == 66
    assert set(results["baselines"]) == {"untrained", "fbank_stats"} and "supervised" in results
    assert (exp / "pseudo" / "round1" / "large_margin").is_dir()  # the large-margin fine-tuning ran
