"""bench/gate_vs_noise.py's label corruption, bench/gate_fit_space.py's gate figures and
bench/calibration_rules.py on tiny data: the figures the benchmarks report are what they
say they are."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cdino.api import save_model_folder
from cdino.frontend.fbank import FbankConfig
from cdino.models.registry import EncoderConfig, build_encoder
from cdino.pseudo.loss_gate import fit_loss_gate

from conftest import load_bench, write_speaker_dir, write_trials_for


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_noisy_labels_replace_a_fraction_by_other_speakers(p):
    true = np.random.default_rng(1).integers(0, 50, 20000)
    noisy = load_bench("gate_vs_noise").noisy_labels(true, p, seed=0)
    changed = noisy != true
    assert abs(changed.mean() - p) < 0.02
    assert noisy.min() >= 0 and noisy.max() < 50
    np.testing.assert_array_equal(noisy, load_bench("gate_vs_noise").noisy_labels(true, p, seed=0))
    assert (noisy != load_bench("gate_vs_noise").noisy_labels(true, p, seed=1)).any()


def test_gate_figures_count_what_each_fit_keeps():
    rng = np.random.default_rng(0)
    wrong = rng.random(4000) < 0.3
    losses = np.where(wrong, rng.normal(6.0, 0.5, 4000), rng.normal(1.0, 0.2, 4000)).clip(1e-3)
    losses[:5] = np.nan  # never seen: ignored by the fit, not kept
    figures = load_bench("gate_fit_space").gate_figures
    for use_log in (True, False):
        got = figures(losses, wrong, use_log)
        threshold = fit_loss_gate(losses[np.isfinite(losses)], use_log=use_log).threshold
        keep = np.isfinite(losses) & (np.nan_to_num(losses, nan=np.inf) <= threshold)
        assert got["threshold"] == pytest.approx(threshold)
        assert got["kept"] == pytest.approx(keep.mean())
        assert got["clean_kept"] == pytest.approx(keep[~wrong].mean())
        assert got["wrong_dropped"] == pytest.approx((~keep[wrong]).mean())
        assert got["clean_kept"] > 0.95 and got["wrong_dropped"] > 0.95  # well separated: both fits work


def test_calibration_rules_score_every_rule_on_the_dev_trials(tmp_path, capsys):
    train = write_speaker_dir(tmp_path / "train", n_speakers=4, utts_per_speaker=12, seconds=1.0)
    dev = write_speaker_dir(tmp_path / "dev", n_speakers=3, utts_per_speaker=6, seconds=1.0, seed=3)
    write_trials_for(dev, dev / "trials", n=60)
    torch.manual_seed(0)
    cfg = EncoderConfig(name="ecapa_tdnn_small", channels=16, embed_dim=32)
    model = save_model_folder(tmp_path / "model", build_encoder(cfg).eval(), cfg, FbankConfig(),
                              np.zeros(32, np.float32), threshold=0.5, threshold_source="test")
    got = load_bench("calibration_rules").main(["--model", str(model), "--train", str(train),
                                                "--dev", str(dev), "--work", str(tmp_path / "work")])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(got))
    rules = got["rules"]
    assert len(rules) == 12 and got["n_trials"] == 60
    for name, r in rules.items():
        per = int(name.split("_per")[1].split("_")[0])
        assert r["recordings"] == 48 and r["clusters"] == max(2, 48 // per)
        if "error" not in r:
            assert r["cllr"] >= r["min_cllr"] - 1e-9 and r["a"] > 0
            assert 0.0 <= r["actdcf_0.01"] and 0.0 <= r["eer"] <= 1.0
    assert any("error" not in r for r in rules.values())
