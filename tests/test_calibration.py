"""Issue 14: calibrated scores (cosine -> LLR), several enrolment utterances, cdino calibrate."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import soundfile as sf

from cdino.atomic import leftovers
from cdino import metrics
from cdino.api import load_model, save_model_folder
from cdino.verbs import run_calibrate, run_eval, run_verify
from cdino.cli import main
from cdino.data.kaldi_dir import read_enroll_map, write_data_dir
from cdino.errors import ConfigError, DataError, ModelFormatError
from cdino.eval.calibration import (CALIBRATION_FILE, Calibration, _objective, fit_calibration,
                                    pseudo_label_calibration, read_calibration, write_calibration)
from cdino.eval.threshold import cosine_scores, pseudo_label_threshold, pseudo_label_trials
from cdino.eval.verification import average_enrolment, score_enrolled_trials
from cdino.frontend.fbank import FbankConfig
from test_api import TINY, tiny_encoder, voice


def gaussian_trials(n=40000, seed=0, p_tar=0.3, mu=(0.1, 0.5), sigma=0.1):
    """Equal-variance Gaussian scores: the true LLR is linear, a = Δμ/σ², b = -(μ1²-μ0²)/2σ²."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < p_tar
    scores = rng.normal(mu[0], sigma, n) + (mu[1] - mu[0]) * labels
    a = (mu[1] - mu[0]) / sigma ** 2
    b = -(mu[1] ** 2 - mu[0] ** 2) / (2 * sigma ** 2)
    return scores, labels.astype(np.int8), a, b


# ---------------------------------------------------------------------------- the fit


@pytest.mark.parametrize("prior", [0.5, 0.1, 0.9])
def test_fit_recovers_the_true_llr_at_any_prior(prior):
    scores, labels, a, b = gaussian_trials()
    cal = fit_calibration(scores, labels, prior=prior)
    assert cal.a == pytest.approx(a, rel=0.05) and cal.b == pytest.approx(b, abs=0.05 * abs(b))
    assert (cal.prior, cal.n_target, cal.n_nontarget) == (prior, int(labels.sum()), int((1 - labels).sum()))
    # calibrated: Cllr close to the lowest any monotone map reaches; uncalibrated cosine far off
    llr = cal.llr(scores)
    assert metrics.cllr(llr, labels) - metrics.min_cllr(scores, labels) < 0.01
    assert metrics.cllr(scores, labels) > metrics.cllr(llr, labels) + 0.3
    assert metrics.act_dcf(llr, labels, 0.05) < metrics.min_dcf(scores, labels, 0.05) + 0.05


def test_fit_is_the_minimum_of_its_objective_and_the_gradient_is_exact():
    scores, labels, _, _ = gaussian_trials(3000, seed=1)
    tar = labels.astype(bool)
    args = (scores, tar, 0.3 / tar.sum(), 0.7 / (~tar).sum(), math.log(0.3 / 0.7), 0.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.normal(0, 5, 2)
        f, g = _objective(x, *args)
        for i in range(2):
            e = np.zeros(2)
            e[i] = 1e-6
            num = (_objective(x + e, *args)[0] - _objective(x - e, *args)[0]) / 2e-6
            assert g[i] == pytest.approx(num, rel=1e-5, abs=1e-8)
    cal = fit_calibration(scores, labels, prior=0.3)
    best = _objective(np.array([cal.a, cal.b]), *args)[0]
    for da, db in [(0.5, 0), (-0.5, 0), (0, 0.1), (0, -0.1), (0.3, -0.1)]:
        assert _objective(np.array([cal.a + da, cal.b + db]), *args)[0] > best
    # at prior 0.5 the objective is the Cllr of the LLRs
    cal = fit_calibration(scores, labels, prior=0.5)
    half = (scores, tar, 0.5 / tar.sum(), 0.5 / (~tar).sum(), 0.0, 0.0)
    assert _objective(np.array([cal.a, cal.b]), *half)[0] == pytest.approx(
        metrics.cllr(cal.llr(scores), labels), abs=1e-9)


def test_fit_refuses_scores_that_do_not_rank_targets_and_stays_finite_on_separable_ones():
    scores, labels, _, _ = gaussian_trials(2000)
    with pytest.raises(ValueError, match="do not rank target"):
        fit_calibration(-scores, labels)
    with pytest.raises(ValueError, match="prior"):
        fit_calibration(scores, labels, prior=1.0)
    sep = np.r_[np.zeros(20), np.ones(20)]
    cal = fit_calibration(0.2 + 0.1 * sep, sep)  # perfectly separated
    assert math.isfinite(cal.a) and cal.a > 0
    assert (cal.llr(0.3) > 5) and (cal.llr(0.2) < -5)


def test_score_threshold_is_the_bayes_decision_in_cosine_units():
    cal = Calibration(a=10.0, b=-3.0)
    for p in (0.5, 0.01, 0.9):
        t = cal.score_threshold(p)
        assert cal.llr(t) == pytest.approx(metrics.bayes_threshold(p))
        assert cal.llr(t + 1e-6) >= metrics.bayes_threshold(p) > cal.llr(t - 1e-6)
    assert cal.score_threshold(0.5) == pytest.approx(0.3)


def test_pseudo_label_calibration_uses_the_threshold_trials():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    labels = np.repeat(np.arange(8), 25)
    emb = centres[labels] + 0.8 * rng.normal(size=(200, 16))
    mean = emb.mean(0)
    cal = pseudo_label_calibration(emb, labels, mean, n_trials=4000, seed=3)
    enroll, test, is_target = pseudo_label_trials(labels, 4000, 3)
    scores = cosine_scores(emb, enroll, test, mean)
    ref = fit_calibration(scores, is_target)
    assert (cal.a, cal.b) == pytest.approx((ref.a, ref.b), rel=1e-9)
    assert cal.n_target == 2000 and "k-means (8 clusters)" in cal.source and "200" in cal.source
    # the threshold the folder stores comes from the very same trials
    assert pseudo_label_threshold(emb, labels, mean, n_trials=4000, seed=3) == metrics.eer_threshold(
        scores, is_target)


# ------------------------------------------------------------------ calibration.json


def test_calibration_file_round_trip_and_strict_reading(tmp_path):
    path = tmp_path / CALIBRATION_FILE
    assert read_calibration(path) is None  # absent: an uncalibrated folder
    cal = Calibration(a=12.5, b=-4.25, prior=0.5, n_target=10, n_nontarget=20, source="test",
                      created="2026-01-01T00:00:00+00:00")
    write_calibration(path, cal)
    assert read_calibration(path) == cal and not leftovers(tmp_path)
    assert set(json.loads(path.read_text())) == {"a", "b", "prior", "n_target", "n_nontarget",
                                                 "source", "created", "domain"}
    for text, match in [('{"a": 1.0, "b": 0.0, "scale": 2}', "unknown key 'scale'"),
                        ('{"b": 0.0}', "key 'a' missing"),
                        ('{"a": "big", "b": 0.0}', "a must be a float"),
                        ('{"a": -1.0, "b": 0.0}', "scale a must be positive"),
                        ('{"a": 1.0, "b": 0.0, "prior": 1.5}', "prior must lie in"),
                        ('{"a": 1.0, "b": 0.0, "n_target": 1.5}', "n_target must be an int"),
                        ("[1, 2]", "expected a JSON object"),
                        ("{not json", "not readable JSON")]:
        path.write_text(text)
        with pytest.raises(ModelFormatError, match=re.escape(str(path)) + ": " + re.escape(match)):
            read_calibration(path)
    path.write_text('{"a": 3, "b": 0}')  # integers are numbers too
    assert read_calibration(path).a == 3.0


@pytest.fixture()
def calibrated_dir(tmp_path):
    mean = np.random.default_rng(0).normal(0, 0.01, 32).astype(np.float32)
    cal = Calibration(a=8.0, b=-2.0, source="by hand")
    return save_model_folder(tmp_path / "cal_model", tiny_encoder(), TINY, FbankConfig(), mean,
                             threshold=0.25, threshold_source="test", calibration=cal)


@pytest.fixture()
def plain_dir(tmp_path):
    mean = np.random.default_rng(0).normal(0, 0.01, 32).astype(np.float32)
    return save_model_folder(tmp_path / "model", tiny_encoder(), TINY, FbankConfig(), mean,
                             threshold=0.25, threshold_source="test")


def test_model_folder_with_and_without_calibration(calibrated_dir, plain_dir, tmp_path):
    assert sorted(p.name for p in calibrated_dir.iterdir()) == [
        "calibration.json", "config.yaml", "encoder.safetensors", "mean.npy"]
    model = load_model(calibrated_dir)
    assert (model.calibration.a, model.calibration.b) == (8.0, -2.0)
    a, b = voice(16000, 120.0, seed=1), voice(16000, 230.0, seed=2)
    s = model.score(a, b, sample_rate=16000)
    assert model.llr(a, b, sample_rate=16000) == pytest.approx(8.0 * s - 2.0)
    assert model.verify(a, b, sample_rate=16000, prior=0.5)[1] == (8.0 * s - 2.0 >= 0)
    assert model.verify(a, b, sample_rate=16000)[1] == (s >= 0.25)  # no prior: the cosine threshold
    assert model.verify(a, a, sample_rate=16000, prior=0.5)[1] is True
    assert model.with_threshold(0.9).calibration is model.calibration
    from cdino.api import onnx_metadata

    assert json.loads(onnx_metadata(model)["cdino.calibration"]) == {"a": 8.0, "b": -2.0, "prior": 0.5}
    assert json.loads(onnx_metadata(load_model(plain_dir))["cdino.calibration"]) is None
    old = load_model(plain_dir)  # an older folder: no calibration.json, loads as before
    assert old.calibration is None
    with pytest.raises(ModelFormatError, match="no calibration"):
        old.llr(a, b, sample_rate=16000)
    with pytest.raises(ModelFormatError, match="no calibration"):
        old.verify(a, b, sample_rate=16000, prior=0.5)
    (calibrated_dir / CALIBRATION_FILE).write_text('{"a": 0.0, "b": 1.0}')
    with pytest.raises(ModelFormatError, match="calibration.json: scale a must be positive"):
        load_model(calibrated_dir)


# ------------------------------------------------------------- several enrolment files


def test_score_of_an_enrolment_list_is_the_cosine_of_the_mean_normalised_embedding(plain_dir):
    model = load_model(plain_dir)
    waves = [voice(14000 + 500 * k, 120.0 * (1 + 0.02 * k), seed=k) for k in range(3)]
    test = voice(15000, 125.0, seed=9)
    embs = [model.embed(w, 16000).astype(np.float64) for w in waves]
    et = model.embed(test, 16000).astype(np.float64) - model.mean
    x = [(e - model.mean) / np.linalg.norm(e - model.mean) for e in embs]
    m = np.mean(x, axis=0)
    want = float(m @ et / np.linalg.norm(m) / np.linalg.norm(et))
    assert model.score(waves, test, sample_rate=16000) == pytest.approx(want, abs=1e-6)
    assert model.score(embs, et + model.mean) == pytest.approx(want, abs=1e-6)
    assert model.score(test, tuple(reversed(waves)), sample_rate=16000) == pytest.approx(want, abs=1e-6)
    assert model.score([waves[0]], test, sample_rate=16000) == pytest.approx(
        model.score(waves[0], test, sample_rate=16000), abs=1e-6)
    np.testing.assert_allclose(average_enrolment(np.stack(embs), model.mean), m, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        model.score([], test, sample_rate=16000)


def make_audio_data(root, n_speakers=3, per_speaker=4):
    wav, utt2spk = {}, {}
    for s in range(n_speakers):
        for k in range(per_speaker):
            utt = f"s{s}_u{k}"
            path = root / "audio" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, voice(12000 + 700 * k, (100.0, 160.0, 250.0, 330.0)[s], seed=10 * s + k), 16000)
            wav[utt], utt2spk[utt] = path, f"s{s}"
    return write_data_dir(root / "data", wav, utt2spk), wav


def test_eval_with_an_enroll_map_scores_like_model_score(plain_dir, tmp_path, capsys):
    data, wav = make_audio_data(tmp_path)
    emap = tmp_path / "enroll"
    # enrolment ids may look like utterance ids (s1_u0 here names an enrolment of s0)
    emap.write_text("spkA s0_u0 s0_u1 s0_u2\n\nspkB s1_u0.wav s1_u1\ns1_u0 s2_u0 s2_u1 s2_u2\n")
    tests = ["s0_u3", "s1_u3", "s2_u3", "s1_u2"]
    owner = {"spkA": "s0", "spkB": "s1", "s1_u0": "s2"}
    lines = [f"{e} {t} {'target' if owner[e] == t[:2] else 'nontarget'}" for e in owner for t in tests]
    trials = tmp_path / "trials"
    trials.write_text("\n".join(lines) + "\n")
    run_eval(plain_dir, data, trials, tmp_path / "r.json", scores_out=tmp_path / "scores",
             progress=False, enroll=emap)
    rows = [line.split() for line in (tmp_path / "scores").read_text().splitlines()]
    model = load_model(plain_dir)
    got = read_enroll_map(emap)
    assert got.utts["spkB"] == ["s1_u0", "s1_u1"] and got.lines["s1_u0"] == 4
    for e, t, s in rows:
        want = model.score([wav[u] for u in got.utts[e]], wav[t])
        assert float(s) == pytest.approx(want, abs=2e-5), (e, t)
    assert json.loads((tmp_path / "r.json").read_text())["n_trials"] == len(lines)


def test_enroll_map_errors_name_the_file_and_line(plain_dir, tmp_path):
    data, _ = make_audio_data(tmp_path, n_speakers=2, per_speaker=2)
    emap, trials = tmp_path / "enroll", tmp_path / "trials"
    trials.write_text("spkA s1_u1 nontarget\nspkZ s1_u1 nontarget\n")
    emap.write_text("spkA s0_u0 s0_u1\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(trials))}:2: enrolment 'spkZ' is not in {re.escape(str(emap))}"):
        run_eval(plain_dir, data, trials, tmp_path / "r.json", progress=False, enroll=emap)
    trials.write_text("spkA s1_u1 nontarget\nspkA ghost target\n")
    with pytest.raises(DataError, match=r"trials:2: utterance 'ghost' is not in"):
        run_eval(plain_dir, data, trials, tmp_path / "r.json", progress=False, enroll=emap)
    trials.write_text("spkA s1_u1 nontarget\nspkA s0_u1 target\n")
    emap.write_text("spkA s0_u0 s0_u1 nobody\n")
    with pytest.raises(DataError, match=r"enroll:1: utterance 'nobody' \(enrolment 'spkA'\) is not in"):
        run_eval(plain_dir, data, trials, tmp_path / "r.json", progress=False, enroll=emap)
    with pytest.raises(DataError, match=r"trials:1: utterance 'spkA' is not in"):
        run_eval(plain_dir, data, trials, tmp_path / "r.json", progress=False)  # no map given
    assert not (tmp_path / "r.json").exists()
    emap.write_text("spkA s0_u0\nspkB s0_u0 nobody\n")  # enrolments no trial uses are not checked
    run_eval(plain_dir, data, trials, tmp_path / "r.json", progress=False, enroll=emap)
    assert json.loads((tmp_path / "r.json").read_text())["n_trials"] == 2
    for text, match in [("spkA s0_u0\nspkB\n", r"enroll:2: expected 'enroll_id utt1 utt2 \.\.\.'"),
                        ("spkA s0_u0\n\nspkA s0_u1\n", r"enroll:3: enrolment 'spkA' listed twice \(first on line 1\)"),
                        ("\n\n", r"enroll: no enrolments")]:
        emap.write_text(text)
        with pytest.raises(DataError, match=match):
            read_enroll_map(emap)


def test_score_enrolled_trials_matches_single_enrolment_scoring():
    from cdino.eval.verification import score_trials

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8)).astype(np.float32)
    index = {f"u{i}": i for i in range(6)}
    mean = emb.mean(0)

    class T:
        enroll = ["a", "b"]
        test = ["u4", "u5"]
        path = None

    class Single:
        enroll = ["u0", "u1"]
        test = ["u4", "u5"]

    one = score_enrolled_trials(emb, index, T, {"a": ["u0"], "b": ["u1"]}, mean=mean)
    np.testing.assert_allclose(one, score_trials(emb, index, Single, mean=mean), atol=1e-6)
    two = score_enrolled_trials(emb, index, T, {"a": ["u0", "u2"], "b": ["u1", "u3"]}, mean=mean)
    x = (emb - mean) / np.linalg.norm(emb - mean, axis=1, keepdims=True)
    m = (x[0] + x[2]) / 2
    assert two[0] == pytest.approx(float(m @ x[4] / np.linalg.norm(m)), abs=1e-6)
    with pytest.raises(DataError, match="has no embedding"):
        score_enrolled_trials(emb, index, T, {"a": ["u0", "zz"], "b": ["u1"]}, mean=mean)


# --------------------------------------------------------------------- verify / eval / calibrate


def _wav(path, f0, seed, n=24000):
    sf.write(path, voice(n, f0, seed=seed), 16000)
    return path


def test_verify_prints_llr_and_decides_at_the_bayes_threshold(calibrated_dir, plain_dir, tmp_path, capsys):
    a, b = _wav(tmp_path / "a.wav", 120.0, 3), _wav(tmp_path / "b.wav", 260.0, 4)
    model = load_model(calibrated_dir)
    s = model.score(a, b)
    line = run_verify(calibrated_dir, a, b, optimize=False)
    m = re.fullmatch(r"score=(-?\d+\.\d{6}) threshold=(-?\d+\.\d{6}) decision=(same|different) "
                     r"llr=(-?\d+\.\d{6}) prior=0\.5", line)
    assert m, line
    assert float(m[1]) == pytest.approx(s, abs=1e-5)
    assert float(m[2]) == pytest.approx(0.25, abs=1e-6)  # (0 - b) / a: llr >= 0 in cosine units
    assert float(m[4]) == pytest.approx(8.0 * s - 2.0, abs=1e-4)
    assert m[3] == ("same" if 8.0 * s - 2.0 >= 0 else "different")
    low = run_verify(calibrated_dir, a, b, optimize=False, prior=0.01)
    assert f"threshold={(math.log(99) + 2.0) / 8.0:.6f}" in low and low.endswith("prior=0.01")
    # an explicit cosine threshold decides; the llr is still shown
    fixed = run_verify(calibrated_dir, a, b, optimize=False, threshold=-1.0)
    assert re.fullmatch(r"score=\S+ threshold=-1\.000000 decision=same llr=\S+", fixed)
    js = json.loads(run_verify(calibrated_dir, [a, a], b, optimize=False, as_json=True))
    assert set(js) == {"score", "threshold", "decision", "llr", "prior", "warnings", "a", "b"}
    assert js["prior"] == 0.5 and js["a"] == [str(a), str(a)]
    # without a calibration: the contract line alone, decided at the folder's threshold
    plain = run_verify(plain_dir, a, b, optimize=False)
    assert re.fullmatch(r"score=\S+ threshold=0\.250000 decision=(same|different)", plain)
    assert json.loads(run_verify(plain_dir, a, b, optimize=False, as_json=True))["llr"] is None
    with pytest.raises(ConfigError, match="--prior needs a calibrated model"):
        run_verify(plain_dir, a, b, prior=0.5)
    with pytest.raises(ConfigError, match="not both"):
        run_verify(calibrated_dir, a, b, prior=0.5, threshold=0.1)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        run_verify(calibrated_dir, a, b, prior=1.0)
    capsys.readouterr()


def test_cli_verify_with_several_enrolment_files(calibrated_dir, tmp_path, capsys):
    files = [_wav(tmp_path / f"e{k}.wav", 120.0 + 3 * k, k) for k in range(3)]
    test = _wav(tmp_path / "t.wav", 122.0, 7)
    assert main(["verify", "--model", str(calibrated_dir), "--enroll", *map(str, files),
                 "--test", str(test), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip()
    model = load_model(calibrated_dir)
    want = model.score(files, test)
    assert re.match(r"score=(\S+) threshold=\S+ decision=(same|different) llr=\S+ prior=0\.5$", out)
    assert float(out.split()[0].split("=")[1]) == pytest.approx(want, abs=2e-4)  # optimize=True path
    for argv in (["--enroll", str(files[0]), str(test)], [str(files[0])],
                 ["--enroll", str(files[0])], [str(files[0]), str(test), str(test)]):
        rc = main(["verify", "--model", str(calibrated_dir), *argv])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: verify takes") and err.count("\n") == 1, argv


def test_eval_reports_calibration_metrics_and_calibrate_refits(calibrated_dir, tmp_path, capsys):
    data, wav = make_audio_data(tmp_path, n_speakers=4, per_speaker=3)
    utts = list(wav)
    lines = [f"{e} {t} {'target' if e[:2] == t[:2] else 'nontarget'}"
             for i, e in enumerate(utts) for t in utts[i + 1:]]
    trials = tmp_path / "trials"
    trials.write_text("\n".join(lines) + "\n")
    res = run_eval(calibrated_dir, data, trials, tmp_path / "r.json", scores_out=tmp_path / "s",
                   progress=False)
    out = capsys.readouterr().out
    scores = np.array([float(r.split()[2]) for r in (tmp_path / "s").read_text().splitlines()])
    labels = np.array([line.endswith(" target") for line in lines], dtype=np.int8)
    llr = 8.0 * scores - 2.0
    assert res["cllr"] == pytest.approx(metrics.cllr(llr, labels), abs=1e-6)
    assert res["min_cllr"] == pytest.approx(metrics.min_cllr(scores, labels), abs=1e-9)
    assert res["actdcf_0.01"] == pytest.approx(metrics.act_dcf(llr, labels, 0.01), abs=1e-9)
    assert res["actdcf_0.05"] == pytest.approx(metrics.act_dcf(llr, labels, 0.05), abs=1e-9)
    assert re.search(r"^Cllr \d+\.\d{3}  minCllr \d\.\d{3}  actDCF\(0\.01\) \d+\.\d{3}  actDCF\(0\.05\) "
                     r"\d+\.\d{3}$", out, re.M)
    from cdino.verbs import calibration_metrics

    got, note = calibration_metrics(scores, labels, load_model(calibrated_dir).calibration, asnorm=True)
    assert got["cllr"] is None and got["min_cllr"] == res["min_cllr"] and "AS-norm" in note

    # cdino calibrate: refit from these (labelled development) trials, written into the folder
    before = (calibrated_dir / CALIBRATION_FILE).read_text()
    assert main(["calibrate", "--model", str(calibrated_dir), "--data", str(data), "--trials", str(trials),
                 "--device", "cpu", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    cal = read_calibration(calibrated_dir / CALIBRATION_FILE)
    ref = fit_calibration(scores, labels, prior=0.5)
    assert (cal.a, cal.b) == pytest.approx((ref.a, ref.b), rel=1e-3)
    assert str(trials) in cal.source and cal.n_target == int(labels.sum())
    assert printed.startswith(f"wrote {calibrated_dir / CALIBRATION_FILE}: llr = ") and "Cllr" in printed
    assert (calibrated_dir / CALIBRATION_FILE).read_text() != before
    assert not leftovers(calibrated_dir)
    refit = run_eval(calibrated_dir, data, trials, tmp_path / "r2.json", progress=False)
    assert refit["cllr"] <= res["cllr"] + 1e-9  # fitted on these very trials
    assert refit["cllr"] == pytest.approx(metrics.cllr(cal.llr(scores), labels), abs=1e-5)
    # a list of one class cannot be fitted: error naming the list, old calibration kept
    kept = (calibrated_dir / CALIBRATION_FILE).read_text()
    (tmp_path / "tar_only").write_text("s0_u0 s0_u1 target\ns1_u0 s1_u1 target\n")
    rc = main(["calibrate", "--model", str(calibrated_dir), "--data", str(data), "--trials",
               str(tmp_path / "tar_only"), "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "tar_only: calibration needs target and non-target trials" in err
    assert (calibrated_dir / CALIBRATION_FILE).read_text() == kept
    with pytest.raises(ConfigError, match="--prior"):
        run_calibrate(calibrated_dir, data, trials, prior=0.0)


def test_calibrate_without_labels_on_a_folder_of_audio(calibrated_dir, tmp_path, capsys):
    """``cdino calibrate`` without ``--trials``: k-means pseudo-label trials of the folder's
    own recordings (one cluster per 20 by default, the export's rule), the calibration
    names the folder as its domain; ``--recentre`` also takes the folder's mean embedding;
    too many clusters for the recordings is a one-line error and the folder is unchanged."""
    from cdino.data.kaldi_dir import DataDir
    from cdino.eval.embed import extract_embeddings
    from cdino.eval.model_folder import MEAN_FILE
    from cdino.eval.threshold import label_free_clusters

    data, _ = make_audio_data(tmp_path, n_speakers=4, per_speaker=10)
    mean_before = np.load(calibrated_dir / MEAN_FILE)
    assert main(["calibrate", "--model", str(calibrated_dir), "--data", str(data), "--device", "cpu",
                 "--workers", "0"]) == 0
    out = capsys.readouterr().out
    k = label_free_clusters(40)
    assert k == 2 and f"label-free, {k} clusters of 40 utterances of {data}" in out
    cal = read_calibration(calibrated_dir / CALIBRATION_FILE)
    assert cal.domain == str(data) and f"k-means ({k} clusters)" in cal.source and cal.a > 0
    np.testing.assert_array_equal(np.load(calibrated_dir / MEAN_FILE), mean_before)  # not recentred
    assert main(["calibrate", "--model", str(calibrated_dir), "--data", str(data), "--clusters", "4",
                 "--recentre", "--device", "cpu", "--workers", "0"]) == 0
    assert "4 clusters of 40 utterances" in capsys.readouterr().out
    model = load_model(calibrated_dir)
    _, emb = extract_embeddings(model.encoder, model.fbank, DataDir.load(data), device="cpu", progress=False)
    np.testing.assert_allclose(np.load(calibrated_dir / MEAN_FILE), emb.mean(0), atol=1e-4)
    assert "k-means (4 clusters)" in read_calibration(calibrated_dir / CALIBRATION_FILE).source
    kept = {f.name: f.read_bytes() for f in calibrated_dir.iterdir() if f.is_file()}
    rc = main(["calibrate", "--model", str(calibrated_dir), "--data", str(data), "--clusters", "30",
               "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{data}: 40 utterances are too few for label-free calibration with 30 clusters" in err
    assert {f.name: f.read_bytes() for f in calibrated_dir.iterdir() if f.is_file()} == kept
