"""Model folders and the user API: save/load, embed, score, verify, eval, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import yaml

from cdino.atomic import leftovers
import cdino
import cdino.api as api
import cdino.verbs as verbs
from cdino.api import load_model, save_model_folder
from cdino.verbs import run_eval, run_verify
from cdino.data.kaldi_dir import write_data_dir
from cdino.errors import AudioError, ConfigError, DataError, ModelFormatError
from cdino.eval.embed import embed_waves
from cdino.frontend.fbank import Fbank, FbankConfig
from cdino.metrics import eer, min_dcf
from cdino.models.registry import EncoderConfig, build_encoder

TINY = EncoderConfig(name="ecapa_tdnn_small", channels=16, embed_dim=32)


def tiny_encoder(seed: int = 0, cfg: EncoderConfig = TINY):
    torch.manual_seed(seed)
    enc = build_encoder(cfg)
    for m in enc.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return enc.eval()


@pytest.fixture()
def model_dir(tmp_path):
    enc = tiny_encoder()
    mean = np.random.default_rng(0).normal(0, 0.01, 32).astype(np.float32)
    return save_model_folder(tmp_path / "model", enc, TINY, FbankConfig(), mean, threshold=0.25,
                             threshold_source="EER threshold of 100 test-free trials",
                             info={"method": "dino", "stage": "dino"})


def voice(n: int, f0: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A crude voiced sound: harmonics of ``f0`` with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 12))
    return (0.1 * x + 0.01 * rng.standard_normal(n)).astype(np.float32)


def test_round_trip_gives_identical_embeddings(model_dir, tmp_path):
    model = load_model(model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.yaml", "encoder.safetensors", "mean.npy"]
    assert not leftovers(tmp_path)
    cfg = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert cfg["format_version"] == 1 and cfg["embed_dim"] == 32 and cfg["threshold"] == 0.25
    assert cfg["info"]["method"] == "dino" and cfg["info"]["cdino_version"] == cdino.__version__
    assert model.embed_dim == 32 and model.threshold == 0.25 and not model.encoder.training
    wave = voice(20000, 120.0)
    direct = embed_waves(tiny_encoder(), Fbank(), [wave])[0].numpy()
    got = model.embed(wave, sample_rate=16000)
    assert got.dtype == np.float32 and got.shape == (32,)
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
    assert model.features(wave).shape == (1, 123, 80)
    assert isinstance(cdino.load_model(model_dir), api.SpeakerModel)

    # Saving again over it replaces it whole; a failed save leaves the old folder intact.
    other = tiny_encoder(seed=1)
    save_model_folder(model_dir, other, TINY, FbankConfig(), model.mean, 0.5, "x")
    assert load_model(model_dir).threshold == 0.5

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.torch
    original = safetensors.torch.save_file
    safetensors.torch.save_file = broken
    try:
        with pytest.raises(OSError):
            save_model_folder(model_dir, tiny_encoder(), TINY, FbankConfig(), model.mean, 0.9, "y")
    finally:
        safetensors.torch.save_file = original
    assert load_model(model_dir).threshold == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_embed_path_array_and_resampled_array_agree(model_dir, tmp_path):
    model = load_model(model_dir)
    x8 = voice(12000, 110.0, rate=8000)  # 1.5 s at 8 kHz
    x16 = soxr.resample(x8, 8000, 16000, quality="HQ").astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, x16, 16000, subtype="FLOAT")
    from_path = model.embed(str(path))
    from_array = model.embed(x16, sample_rate=16000)
    from_8k = model.embed(x8, sample_rate=8000)
    np.testing.assert_allclose(from_path, from_array, rtol=1e-5, atol=1e-6)
    cos = np.dot(from_8k, from_path) / np.linalg.norm(from_8k) / np.linalg.norm(from_path)
    assert cos > 0.9999
    wrong_rate = model.embed(x8, sample_rate=16000)  # the 8 kHz samples taken as 16 kHz
    assert np.abs(wrong_rate - from_path).max() > 100 * np.abs(from_8k - from_path).max()
    with pytest.raises(ValueError, match="sample_rate is required"):
        model.embed(x16)
    with pytest.raises(ValueError, match="1-D"):
        model.embed(np.stack([x16, x16]), sample_rate=16000)
    batch = model.embed_batch([str(path), x16, voice(16000, 200.0)], sample_rate=16000)
    assert batch.shape == (3, 32)
    np.testing.assert_allclose(batch[0], from_path, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch[1], from_array, rtol=1e-5, atol=1e-6)
    at_8k = model.embed_batch([x8, str(path)], sample_rate=8000)  # arrays resampled; paths whatever the rate
    np.testing.assert_allclose(at_8k[0], from_8k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(at_8k[1], from_path, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.embed_batch([str(path)])[0], from_path, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"sample_rate is required when waves holds arrays \(waves\[1\]"):
        model.embed_batch([str(path), x16])


def test_score_is_symmetric_bounded_and_uses_the_mean(model_dir, tmp_path):
    model = load_model(model_dir)
    a, b = voice(16000, 110.0, seed=1), voice(18000, 190.0, seed=2)
    pa, pb = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(pa, a, 16000, subtype="FLOAT")
    sf.write(pb, b, 16000, subtype="FLOAT")
    s_ab, s_ba = model.score(pa, pb), model.score(str(pb), str(pa))
    assert s_ab == pytest.approx(s_ba, abs=1e-9) and -1.0 <= s_ab <= 1.0
    assert model.score(pa, pa) == pytest.approx(1.0, abs=1e-6)
    ea, eb = model.embed(a, 16000), model.embed(b, 16000)
    assert model.score(ea, eb) == pytest.approx(s_ab, abs=1e-6)
    assert model.score(a, eb, sample_rate=16000) == pytest.approx(s_ab, abs=1e-6)  # audio + embedding
    xa, xb = ea - model.mean, eb - model.mean
    assert s_ab == pytest.approx(np.dot(xa, xb) / np.linalg.norm(xa) / np.linalg.norm(xb), abs=1e-6)
    raw = np.dot(ea, eb) / np.linalg.norm(ea) / np.linalg.norm(eb)
    model.mean = (ea + eb) / 2 + 0.5  # a different mean changes the score
    assert model.score(ea, eb) != pytest.approx(raw, abs=1e-3)
    model = load_model(model_dir)
    score, same = model.verify(pa, pb)
    assert score == pytest.approx(s_ab) and same == (s_ab >= 0.25)
    assert model.with_threshold(s_ab - 0.01).verify(pa, pb)[1] is True
    assert model.with_threshold(s_ab + 0.01).verify(pa, pb)[1] is False
    assert model.threshold == 0.25


def _edit_config(folder, **changes):
    path = folder / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))


def test_bad_model_folders_fail_with_one_clear_line(model_dir, tmp_path):
    with pytest.raises(ModelFormatError, match="model folder not found"):
        load_model(tmp_path / "nowhere")
    _edit_config(model_dir, format_version=7)
    with pytest.raises(ModelFormatError) as err:
        load_model(model_dir)
    assert str(err.value) == (f"{model_dir}/config.yaml: format_version 7 is not supported "
                              "(this cdino reads 1)")
    _edit_config(model_dir, format_version=1, treshold=0.3)
    with pytest.raises(ConfigError, match="treshold"):
        load_model(model_dir)
    cfg = yaml.safe_load((model_dir / "config.yaml").read_text())
    del cfg["treshold"]
    cfg["encoder"]["channels"] = 24  # weights no longer fit
    (model_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelFormatError, match=r"encoder.safetensors: weight .* has shape"):
        load_model(model_dir)
    cfg["encoder"]["channels"] = 16
    (model_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    load_model(model_dir)

    weights = model_dir / "encoder.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFormatError, match="encoder.safetensors: not a readable safetensors"):
        load_model(model_dir)
    weights.write_bytes(blob)
    (model_dir / "mean.npy").unlink()
    with pytest.raises(ModelFormatError, match="mean.npy: missing"):
        load_model(model_dir)
    np.save(model_dir / "mean.npy", np.zeros(5, np.float32))
    with pytest.raises(ModelFormatError, match=r"mean.npy: expected a finite \(32,\)"):
        load_model(model_dir)
    weights.unlink()
    with pytest.raises(ModelFormatError, match="encoder.safetensors: missing"):
        load_model(model_dir)
    for err in (ModelFormatError("x"),):
        assert "\n" not in str(err)


def make_eval_data(root):
    """Four speakers (f0) with three utterances each, plus one unused broken file."""
    wav, utt2spk = {}, {}
    for s, f0 in enumerate((95.0, 140.0, 210.0, 300.0)):
        for k in range(3):
            utt = f"s{s}_u{k}"
            path = root / "audio" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, voice(12000 + 1000 * k, f0, seed=10 * s + k), 16000)
            wav[utt], utt2spk[utt] = path, f"s{s}"
    broken = root / "audio" / "unused.wav"
    broken.write_bytes(b"not audio")
    wav["unused"], utt2spk["unused"] = broken, "s9"
    data = write_data_dir(root / "data", wav, utt2spk)
    utts = [u for u in wav if u != "unused"]
    lines = []
    for i, e in enumerate(utts):
        for t in utts[i + 1:]:
            same = e.split("_")[0] == t.split("_")[0]
            lines.append(f"{e} {t} {'target' if same else 'nontarget'}")
    trials = root / "trials"
    trials.write_text("\n".join(lines) + "\n")
    return data, trials, len(lines)


def test_run_eval_writes_json_scores_and_plots(model_dir, tmp_path, capsys):
    data, trials, n = make_eval_data(tmp_path)
    out = tmp_path / "eval"
    result = run_eval(model_dir, data, trials, out / "result.json", scores_out=out / "scores",
                      plots_dir=out / "plots", progress=False)
    printed = capsys.readouterr().out
    assert re.search(rf"^EER \d+\.\d\d %  minDCF\(0\.01\) \d\.\d{{3}}  minDCF\(0\.05\) \d\.\d{{3}}  "
                     rf"\({n} trials\)$", printed, re.M)
    saved = json.loads((out / "result.json").read_text())
    assert saved == result and set(saved) == {"eer", "mindcf_0.01", "mindcf_0.05", "n_trials", "cllr",
                                              "min_cllr", "actdcf_0.01", "actdcf_0.05", "decision_threshold",
                                              "miss_rate", "false_alarm_rate"}
    # no calibration.json in this folder: Cllr / actDCF are null, with a one-line note
    assert saved["cllr"] is None and saved["actdcf_0.01"] is None and 0 < saved["min_cllr"] <= 1
    assert re.search(r"^minCllr \d\.\d{3}  \(Cllr/actDCF not computed: the model has no calibration",
                     printed, re.M)
    assert saved["n_trials"] == n
    rows = [line.split() for line in (out / "scores").read_text().splitlines()]
    labels = np.array([1 if line.split()[2] == "target" else 0
                       for line in trials.read_text().splitlines()])
    scores = np.array([float(r[2]) for r in rows])
    assert [r[:2] for r in rows] == [line.split()[:2] for line in trials.read_text().splitlines()]
    assert saved["eer"] == pytest.approx(eer(scores, labels), abs=1e-9)
    assert saved["mindcf_0.01"] == pytest.approx(min_dcf(scores, labels, 0.01), abs=1e-9)
    # The scores are the model's own: cosine after subtracting the stored mean.
    model = load_model(model_dir)
    e, t = rows[0][:2]
    assert scores[0] == pytest.approx(model.score(data / ".." / "audio" / f"{e}.wav",
                                                  data / ".." / "audio" / f"{t}.wav"), abs=1e-5)
    assert (out / "plots" / "det.png").stat().st_size > 0
    assert len(list((out / "plots").glob("*.png"))) == 2


def test_run_eval_unknown_trial_utterance_fails_before_embedding(model_dir, tmp_path, monkeypatch):
    data, trials, _ = make_eval_data(tmp_path)
    with open(trials, "a") as f:
        f.write("s0_u0 ghost_utt nontarget\n")

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedding started before the trials were checked")

    monkeypatch.setattr(verbs, "extract_embeddings", no_embedding)
    with pytest.raises(DataError, match="'ghost_utt'") as err:
        run_eval(model_dir, data, trials, tmp_path / "r.json", progress=False)
    assert "\n" not in str(err.value) and str(trials) in str(err.value)
    assert not (tmp_path / "r.json").exists()


def test_run_verify_prints_score_threshold_decision(model_dir, tmp_path, capsys):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, voice(16000, 120.0, seed=3), 16000)
    sf.write(b, voice(16000, 260.0, seed=4), 16000)
    line = run_verify(model_dir, a, b)
    assert capsys.readouterr().out.strip() == line
    m = re.fullmatch(r"score=(-?\d+\.\d+) threshold=(-?\d+\.\d+) decision=(same|different)", line)
    assert m and float(m[2]) == 0.25
    assert m[3] == ("same" if float(m[1]) >= 0.25 else "different")
    assert run_verify(model_dir, a, a, optimize=False).endswith("decision=same")
    assert run_verify(model_dir, a, b, threshold=1.5,
                      optimize=False).endswith("threshold=1.500000 decision=different")


# ---------------------------------------------------------------------------
# issue 13: newcomer findings


def test_cli_verify_prints_its_line_once(model_dir, tmp_path, capsys):
    from cdino.cli import main

    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, voice(24000, 120.0, seed=3), 16000)
    sf.write(b, voice(24000, 260.0, seed=4), 16000)
    assert main(["verify", "--model", str(model_dir), str(a), str(b)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert re.fullmatch(r"score=-?\d+\.\d{6} threshold=0\.250000 decision=(same|different)", lines[0])
    assert err == ""  # 1.5 s of sound each: nothing to warn about


@pytest.mark.parametrize("samples", [0, 300, 1000])
def test_cli_verify_of_a_clip_too_short_is_one_line_error(model_dir, tmp_path, capsys, samples):
    from cdino.cli import main

    short, good = tmp_path / "short.wav", tmp_path / "good.wav"
    sf.write(short, voice(samples, 150.0), 16000)  # 0 ms / 19 ms / 62 ms
    sf.write(good, voice(24000, 150.0), 16000)
    for argv in ([str(short), str(good)], [str(good), str(short)]):
        rc = main(["verify", "--model", str(model_dir), *argv])
        out, err = capsys.readouterr()
        assert rc == 2 and out == ""
        assert err.startswith(f"error: {short}: ") and err.count("\n") == 1, err
        assert "waveform" not in err
    model = load_model(model_dir)
    with pytest.raises(AudioError, match="short.wav: (too short for an embedding|empty)"):
        model.embed(short)
    with pytest.raises(AudioError, match="too short for an embedding"):
        model.embed(voice(1000, 150.0), sample_rate=16000)
    assert model.embed(voice(model.min_samples, 150.0), sample_rate=16000).shape == (32,)


def test_verify_warns_about_short_and_mostly_silent_clips(model_dir, tmp_path, capsys):
    from cdino.cli import main

    short, silent, good = tmp_path / "short.wav", tmp_path / "silent.wav", tmp_path / "good.wav"
    sf.write(short, voice(8000, 120.0, seed=1), 16000)  # 0.5 s < 1.0 s
    sf.write(silent, np.concatenate([voice(16000, 200.0, seed=2), np.zeros(48000, np.float32)]), 16000)
    sf.write(good, voice(32000, 160.0, seed=3), 16000)
    assert main(["verify", "--model", str(model_dir), str(short), str(silent)]) == 0
    out, err = capsys.readouterr()
    assert re.fullmatch(r"score=\S+ threshold=\S+ decision=(same|different)\n", out)
    warned = err.splitlines()
    assert len(warned) == 2 and all(w.startswith("warning: ") for w in warned)
    assert str(short) in warned[0] and "0.50 s" in warned[0]
    assert str(silent) in warned[1] and "mostly silence" in warned[1]

    assert main(["verify", "--model", str(model_dir), "--json", str(short), str(silent)]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert set(got) >= {"score", "threshold", "decision", "warnings"}
    assert got["threshold"] == 0.25 and got["decision"] in ("same", "different")
    assert got["decision"] == ("same" if got["score"] >= 0.25 else "different")
    assert got["warnings"] == [w[len("warning: "):] for w in warned] and len(err.splitlines()) == 2
    model = load_model(model_dir, optimize=True)
    assert got["score"] == pytest.approx(model.score(short, silent), abs=1e-5)

    assert main(["verify", "--model", str(model_dir), "--json", str(good), str(good)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warnings"] == [] and json.loads(out)["decision"] == "same" and err == ""


def test_active_fraction_measures_the_share_of_sound():
    rate = 16000
    tone = voice(rate, 150.0)
    assert api.active_fraction(tone, rate) == 1.0
    assert api.active_fraction(np.zeros(rate, np.float32), rate) == 0.0
    half = np.concatenate([tone, np.zeros(rate, np.float32)])
    assert api.active_fraction(half, rate) == pytest.approx(0.5, abs=0.02)
    quarter = np.concatenate([tone, np.zeros(3 * rate, np.float32)])
    assert api.active_fraction(quarter, rate) == pytest.approx(0.25, abs=0.02)
    # Quiet noise (-70 dBFS) is silence; the same clip at -30 dBFS is sound.
    noise = np.random.default_rng(0).standard_normal(rate).astype(np.float32)
    assert api.active_fraction(noise * 10 ** (-70 / 20), rate) == 0.0
    assert api.active_fraction(noise * 10 ** (-30 / 20), rate) == 1.0
    notes = api.clip_warnings(quarter, rate, "q.wav")
    assert len(notes) == 1 and notes[0].startswith("q.wav: mostly silence")
    assert len(api.clip_warnings(tone[:8000], rate, "s.wav")) == 1
    assert api.clip_warnings(tone, rate, "t.wav") == []


def test_score_of_arrays_needs_their_sample_rate(model_dir, tmp_path):
    model = load_model(model_dir)
    a16, b16 = voice(20000, 110.0, seed=1), voice(20000, 230.0, seed=2)
    pa, pb = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(pa, a16, 16000, subtype="FLOAT")
    sf.write(pb, b16, 16000, subtype="FLOAT")
    from_paths = model.score(pa, pb)
    with pytest.raises(ValueError, match="sample_rate is required"):
        model.score(a16, b16)
    with pytest.raises(ValueError, match="sample_rate is required"):
        model.verify(a16, pb)
    assert model.score(a16, b16, sample_rate=16000) == pytest.approx(from_paths, abs=1e-6)
    assert model.score(torch.from_numpy(a16), pb, sample_rate=16000) == pytest.approx(from_paths, abs=1e-6)
    a8 = soxr.resample(a16, 16000, 8000, quality="HQ").astype(np.float32)
    b8 = soxr.resample(b16, 16000, 8000, quality="HQ").astype(np.float32)
    at_8k = model.score(a8, b8, sample_rate=8000)
    assert at_8k == pytest.approx(from_paths, abs=2e-3)
    assert model.verify(a8, b8, sample_rate=8000)[0] == at_8k
    # Embeddings (1-D arrays of length D) still need no rate.
    ea, eb = model.embed(pa), model.embed(pb)
    assert model.score(ea, eb) == pytest.approx(from_paths, abs=1e-6)
    assert model.score(ea, b16, sample_rate=16000) == pytest.approx(from_paths, abs=1e-6)


def test_load_model_takes_a_device(model_dir, monkeypatch):
    model = cdino.load_model(model_dir, device="cpu")
    assert model.device == torch.device("cpu") and model.encoder is not None
    assert cdino.load_model(model_dir, device="auto", optimize=True).embed_dim == 32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cdino.load_model(model_dir, device="auto").device == torch.device("cpu")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA is not available") as err:
            cdino.load_model(model_dir, device=device)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="not a device name"):
        load_model(model_dir, device="gpu-please")


def test_features_and_embed_accept_paths(model_dir, tmp_path):
    model = load_model(model_dir)
    wave = voice(20000, 140.0)
    path = tmp_path / "x.flac"
    sf.write(path, wave, 16000, subtype="PCM_24")
    read = sf.read(path, dtype="float32")[0]
    feats = model.features(path)
    assert feats.shape == (1, 123, 80)
    torch.testing.assert_close(feats, model.features(read), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.features(str(path)), feats)
    np.testing.assert_allclose(model.embed(path), model.embed(read, sample_rate=16000), rtol=1e-5, atol=1e-6)
    at_8k = soxr.resample(read, 16000, 8000, quality="HQ").astype(np.float32)
    assert model.features(at_8k, sample_rate=8000).shape == (1, 123, 80)


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640),
                                                      (0o077, 0o700, 0o600)])
def test_model_folder_modes_follow_the_umask(tmp_path, umask, dir_mode, file_mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        folder = save_model_folder(tmp_path / "model", tiny_encoder(), TINY, FbankConfig(),
                                   np.zeros(32, np.float32), 0.3, "test")
        again = save_model_folder(folder, tiny_encoder(seed=2), TINY, FbankConfig(),
                                  np.zeros(32, np.float32), 0.4, "test")  # replacing keeps the modes
    finally:
        os.umask(old)
    assert stat.S_IMODE(again.stat().st_mode) == dir_mode
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == ["config.yaml", "encoder.safetensors", "mean.npy"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in files] == [file_mode] * 3
    assert load_model(folder).threshold == 0.4


def _pairs_setup(tmp_path):
    data, trials, _ = make_eval_data(tmp_path)
    rows = [line.split() for line in trials.read_text().splitlines()]
    pairs = tmp_path / "pairs"
    pairs.write_text("".join(f"{e} {t}\n" for e, t, _ in rows[:20]) + "\n")
    return data, trials, pairs, rows[:20]


def test_run_score_pairs_of_utterance_ids(model_dir, tmp_path, capsys):
    from cdino.cli import main

    data, trials, pairs, rows = _pairs_setup(tmp_path)
    out = tmp_path / "scores.txt"
    assert main(["score", "--model", str(model_dir), "--pairs", str(pairs), "--data", str(data),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert f"wrote 20 scores to {out}" in capsys.readouterr().out
    got = [line.split() for line in out.read_text().splitlines()]
    assert [g[:2] for g in got] == [r[:2] for r in rows]
    assert all(g[3] == ("same" if float(g[2]) >= 0.25 else "different") for g in got)
    run_eval(model_dir, data, trials, tmp_path / "r.json", scores_out=tmp_path / "eval_scores", progress=False)
    ref = [float(line.split()[2]) for line in (tmp_path / "eval_scores").read_text().splitlines()[:20]]
    np.testing.assert_allclose([float(g[2]) for g in got], ref, atol=1e-4)
    # A threshold of the user's moves every decision.
    summary = verbs.run_score(model_dir, pairs, out, data_dir=data, threshold=1.5, progress=False)
    assert summary["n_same"] == 0 and summary["n_different"] == 20
    assert all(line.endswith(" different") for line in out.read_text().splitlines())


def test_run_score_pairs_of_paths(model_dir, tmp_path, monkeypatch, capsys):
    from cdino.cli import main

    data, _, _, _ = _pairs_setup(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the current folder
    pairs = tmp_path / "lists" / "pairs"
    pairs.parent.mkdir()
    pairs.write_text("audio/s0_u0.wav audio/s0_u1.wav\naudio/s0_u0.wav audio/s3_u2.wav\n"
                     f"{tmp_path / 'audio' / 's1_u1.wav'} audio/s1_u1.wav\n")
    assert main(["score", "--model", str(model_dir), "--pairs", str(pairs), "--out", "o.txt"]) == 0
    got = [line.split() for line in (tmp_path / "o.txt").read_text().splitlines()]
    model = load_model(model_dir)
    assert [g[0] for g in got] == ["audio/s0_u0.wav", "audio/s0_u0.wav", str(tmp_path / "audio" / "s1_u1.wav")]
    for g in got:
        assert float(g[2]) == pytest.approx(model.score(g[0], g[1]), abs=1e-4)
        assert g[3] == ("same" if float(g[2]) >= model.threshold else "different")
    assert float(got[2][2]) == pytest.approx(1.0, abs=1e-5) and got[2][3] == "same"

    capsys.readouterr()
    pairs.write_text("audio/s0_u0.wav audio/nope.wav\n")
    assert main(["score", "--model", str(model_dir), "--pairs", str(pairs), "--out", "o2.txt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {pairs}:1: ") and "nope.wav" in err and err.count("\n") == 1
    pairs.write_text("audio/s0_u0.wav audio/s0_u1.wav\naudio/s0_u0.wav audio/s0_u1.wav target\n")
    assert main(["score", "--model", str(model_dir), "--pairs", str(pairs), "--out", "o2.txt"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {pairs}:2: expected 'enroll test'")
    pairs.write_text("s0_u0 ghost\n")
    assert main(["score", "--model", str(model_dir), "--pairs", str(pairs), "--data", str(data),
                 "--out", "o2.txt"]) == 2
    assert "'ghost' is not in" in capsys.readouterr().err
    assert not (tmp_path / "o2.txt").exists()


def test_run_eval_label_prefixes_the_line_and_small_lists_are_warned(model_dir, tmp_path, capsys):
    data, trials, n = make_eval_data(tmp_path)  # 12 target, 54 non-target trials
    run_eval(model_dir, data, trials, tmp_path / "r.json", progress=False, label="pseudo_r1")
    out, err = capsys.readouterr()
    assert re.fullmatch(rf"\[pseudo_r1\] EER \d+\.\d\d %  minDCF\(0\.01\) \S+  minDCF\(0\.05\) \S+  "
                        rf"\({n} trials\)\n\[pseudo_r1\] minCllr \d\.\d{{3}}  \([^\n]*\)\n", out), out
    assert err.startswith(f"warning: {trials}: only 12 target and 54 non-target trials") and err.count("\n") == 1
    run_eval(model_dir, data, trials, tmp_path / "r.json", progress=False)
    assert capsys.readouterr().out.startswith("EER ")


def test_the_decision_check_bench_counts_no_disagreement_for_one_rule(model_dir, tmp_path, capsys):
    """bench/check_decisions.py: a calibrated model, every path decides as the API does."""
    from conftest import load_bench

    from cdino.eval.calibration import Calibration, write_calibration

    from cdino.data.kaldi_dir import DataDir

    data, trials, n = make_eval_data(tmp_path)
    wav = DataDir.load(data).wav
    plain = load_model(model_dir)
    scores = np.array([plain.score(wav[e], wav[t]) for e, t, _ in
                       (line.split() for line in trials.read_text().splitlines()[:20])])
    cut = float(np.median(scores))  # the calibrated rule and the EER threshold 0.25 disagree here
    assert ((scores >= cut) != (scores >= 0.25)).any()
    write_calibration(model_dir / "calibration.json", Calibration(a=10.0, b=-10.0 * cut, source="test"))
    bench = load_bench("check_decisions")
    bench.main(["--model", str(model_dir), "--data", str(data), "--trials", str(trials), "--n", "20",
                "--n-verify", "4"])
    out = json.loads(capsys.readouterr().out)
    assert out["n_trials"] == 20 and out["n_verify"] == 4
    assert out["decision_threshold"] == pytest.approx(cut) and 0 < out["api_same"] < 20
    assert out["disagreements_with_api"] == {"score": 0, "verify": 0, "eval": 0}


def test_verify_score_eval_and_the_api_decide_by_one_rule(model_dir, tmp_path, capsys):
    """A calibrated model decides every trial the same way in ``cdino verify``, ``cdino score``,
    ``SpeakerModel.verify`` and ``cdino eval`` (the calibrated Bayes threshold at prior 0.5),
    even where its folder's label-free EER threshold would say otherwise."""
    from cdino.eval.calibration import Calibration, write_calibration
    from cdino.verbs import run_score, run_verify

    data, trials, _ = make_eval_data(tmp_path)
    plain = load_model(model_dir)
    audio = tmp_path / "audio"
    pairs = [line.split()[:2] for line in trials.read_text().splitlines()]
    scores = np.array([plain.score(audio / f"{e}.wav", audio / f"{t}.wav") for e, t in pairs])
    # a calibration whose Bayes threshold lies between the scores, away from the EER threshold 0.25
    cut = float(np.median(scores))
    write_calibration(model_dir / "calibration.json", Calibration(a=10.0, b=-10.0 * cut, source="test"))
    model = load_model(model_dir)
    assert model.threshold == pytest.approx(cut) and model.eer_threshold == 0.25
    assert "calibrated Bayes threshold at prior 0.5" in model.threshold_source
    api = [model.verify(audio / f"{e}.wav", audio / f"{t}.wav")[1] for e, t in pairs]
    (tmp_path / "pairs").write_text("".join(f"{audio / e}.wav {audio / t}.wav\n" for e, t in pairs))
    run_score(model_dir, tmp_path / "pairs", tmp_path / "scored", progress=False)
    scored = [line.split()[3] == "same" for line in (tmp_path / "scored").read_text().splitlines()]
    verified = []
    for e, t in pairs[:12]:
        run_verify(model_dir, audio / f"{e}.wav", audio / f"{t}.wav")
        verified.append("decision=same" in capsys.readouterr().out)
    res = run_eval(model_dir, data, trials, tmp_path / "r.json", progress=False)
    labels = np.array([line.split()[2] == "target" for line in trials.read_text().splitlines()])
    same = np.array(api)
    assert scored == api and verified == api[:12]
    assert res["decision_threshold"] == pytest.approx(cut)
    assert res["miss_rate"] == pytest.approx((~same[labels]).mean(), abs=1e-9)
    assert res["false_alarm_rate"] == pytest.approx(same[~labels].mean(), abs=1e-9)
    assert 0 < same.sum() < len(same) and (same != (scores >= 0.25)).any()  # the rule matters here
    # another prior moves the calibrated threshold; a model without calibration keeps its own
    assert model.decision_threshold(0.01)[0] > model.threshold
    assert plain.threshold == 0.25 and plain.decision_threshold() == (0.25, plain.config.threshold_source)
