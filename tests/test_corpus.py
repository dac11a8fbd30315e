"""The simulated corpus: espeak-ng wrapper, layout, determinism, trials, face proxy."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cdino.config import from_dict
from cdino.corpus import espeak
from cdino.corpus.synth import (SynthConfig, make_speaker, make_trials, make_visual,
                                synthesize)
from cdino.errors import CdinoError, ConfigError

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def median_f0(x: np.ndarray, sr: int = 16000) -> float:
    """Autocorrelation pitch of the voiced 40 ms frames."""
    n, out = int(0.04 * sr), []
    for start in range(0, len(x) - n, n // 2):
        frame = x[start:start + n] - x[start:start + n].mean()
        if np.sqrt(np.mean(frame ** 2)) < 0.02:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1:]
        lag = sr // 400 + int(np.argmax(ac[sr // 400: sr // 60]))
        if ac[lag] > 0.5 * ac[0]:
            out.append(sr / lag)
    return float(np.median(out))


# --------------------------------------------------------------------------- espeak

def test_espeak_speaks_a_sentence():
    wave, sr = espeak.synthesize(SENTENCE, "en-us")
    assert sr == 16000 and wave.dtype == np.float32 and wave.ndim == 1
    assert 2.0 < len(wave) / sr < 7.0  # 12 words at 175 words per minute
    assert np.sqrt(np.mean(wave ** 2)) > 0.02 and np.abs(wave).max() <= 1.0
    native, rate = espeak.synthesize(SENTENCE, "en-us", sample_rate=None)
    assert rate == espeak.native_sample_rate() == 22050
    assert abs(len(native) / rate - len(wave) / sr) < 0.01


def test_espeak_voices_and_parameters_change_the_audio():
    male, _ = espeak.synthesize(SENTENCE, "en+m3")
    female, _ = espeak.synthesize(SENTENCE, "en-us+f2")
    assert median_f0(female) > 1.4 * median_f0(male)
    low, _ = espeak.synthesize(SENTENCE, "en+m3", pitch=10)
    high, _ = espeak.synthesize(SENTENCE, "en+m3", pitch=90)
    assert median_f0(high) > 1.5 * median_f0(low)
    slow, _ = espeak.synthesize(SENTENCE, "en", rate=120)
    fast, _ = espeak.synthesize(SENTENCE, "en", rate=250)
    assert len(fast) < 0.7 * len(slow)
    scot, _ = espeak.synthesize(SENTENCE, "en-gb-scotland")
    rp, _ = espeak.synthesize(SENTENCE, "en-gb-x-rp")
    assert len(scot) != len(rp) or not np.array_equal(scot, rp)


def test_espeak_custom_variant_moves_formants():
    base = espeak.read_variant("m3")
    shifted = base.replace("pitch 80 122", "pitch 160 240")
    assert shifted != base
    a, _ = espeak.synthesize(SENTENCE, "en", variant_text=base)
    b, _ = espeak.synthesize(SENTENCE, "en", variant_text=shifted)
    assert median_f0(b) > 1.5 * median_f0(a)


def test_espeak_is_deterministic_whatever_came_before():
    first, _ = espeak.synthesize(SENTENCE, "en-us+f2", seed=3)
    espeak.synthesize("Something else entirely, said by another voice.", "en+m1", pitch=80)
    again, _ = espeak.synthesize(SENTENCE, "en-us+f2", seed=3)
    assert np.array_equal(first, again)


def _speak_in_worker(_: int) -> bytes:
    return espeak.synthesize(SENTENCE, "en-us+f2", seed=3)[0].tobytes()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_espeak_works_in_worker_processes(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.fail(f"start method {method} unavailable")  # Linux has both
    here = espeak.synthesize(SENTENCE, "en-us+f2", seed=3)[0].tobytes()  # engine in the parent
    with multiprocessing.get_context(method).Pool(1) as pool:
        there = pool.map(_speak_in_worker, range(2))
    assert there == [here, here]


def test_espeak_refuses_unknown_voices():
    with pytest.raises(espeak.EspeakError, match="voice 'xx-nowhere' not found"):
        espeak.synthesize("hello", "xx-nowhere")
    with pytest.raises(espeak.EspeakError, match="variant 'nosuch' not found"):
        espeak.synthesize("hello", "en+nosuch")
    assert issubclass(espeak.EspeakError, CdinoError)
    voices = espeak.available_voices()
    for name in ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc"):
        assert name in voices
    assert {"m1", "f2", "klatt"} <= set(espeak.available_variants())


# --------------------------------------------------------------------------- corpus

def _read_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, SynthConfig]:
    cfg = SynthConfig.preset("tiny", seed=7)
    out = tmp_path_factory.mktemp("tiny")
    synthesize(out, cfg, progress=False)
    return out, cfg


def test_layout(tiny):
    out, cfg = tiny
    record = json.loads((out / "corpus.json").read_text())
    assert record["config"]["seed"] == 7
    speakers = {}
    for split, n_spk in (("train", cfg.n_train_speakers), ("test", cfg.n_test_speakers),
                         ("dev", cfg.n_dev_speakers)):
        d = out / split
        scp = _read_lines(d / "wav.scp")
        utts = [u for u, _ in scp]
        assert len(utts) == n_spk * cfg.sessions_per_speaker * cfg.utts_per_session
        assert utts == sorted(utts)
        for utt, rel in scp:
            assert not Path(rel).is_absolute() and rel.startswith("wav/spk")
            info = sf.info(str(d / rel))
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert cfg.min_utt_seconds - 0.01 <= info.duration <= cfg.max_utt_seconds + 0.01
        wave, _ = sf.read(str(d / scp[0][1]), dtype="float32")
        assert np.sqrt(np.mean(wave ** 2)) > 1e-3
        durs = {u: float(s) for u, s in _read_lines(d / "utt2dur")}  # exact: training reads no header
        assert [round(durs[u] * 16000) for u, _ in scp] == [sf.info(str(d / r)).frames for _, r in scp]
        utt2spk = dict(_read_lines(d / "utt2spk"))
        assert set(utt2spk) == set(utts)
        assert all(u.startswith(s + "-") for u, s in utt2spk.items())
        spk2utt = {row[0]: row[1:] for row in _read_lines(d / "spk2utt")}
        assert sorted(u for us in spk2utt.values() for u in us) == utts
        assert len(spk2utt) == n_spk
        speakers[split] = set(spk2utt)
        visual = np.load(d / "visual.npy")
        ids = (d / "visual_utts.txt").read_text().split()
        assert visual.dtype == np.float32 and visual.shape == (len(ids), cfg.visual_dim)
        assert set(ids) < set(utts) and ids == sorted(ids)  # some missing, order kept
        assert np.allclose(np.linalg.norm(visual, axis=1), 1, atol=1e-5)
        assert record["summary"][split]["utterances"] == len(utts)
    assert not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & (speakers["train"] | speakers["test"])


@pytest.mark.parametrize("split", ["test", "dev"])
def test_trials(tiny, split):
    out, cfg = tiny
    n_trials = cfg.n_trials if split == "test" else cfg.n_dev_trials
    test_utts = {u for u, _ in _read_lines(out / split / "wav.scp")}
    trials = _read_lines(out / split / "trials")
    assert len(trials) == n_trials
    labels = [label for _, _, label in trials]
    assert set(labels) == {"target", "nontarget"}
    assert labels.count("target") == n_trials // 2
    pairs = set()
    for enroll, test, label in trials:
        assert enroll in test_utts and test in test_utts
        spk_a, sess_a, _ = enroll.split("-")
        spk_b, sess_b, _ = test.split("-")
        assert (spk_a == spk_b) == (label == "target")
        if label == "target":
            assert sess_a != sess_b
        pairs.add(frozenset((enroll, test)))
    assert len(pairs) == len(trials)


def test_same_seed_same_files_any_workers(tiny, tmp_path):
    out, cfg = tiny
    espeak.synthesize(SENTENCE, "en-gb-scotland+f2")  # whatever this process did before
    again = tmp_path / "again"
    synthesize(again, SynthConfig.preset("tiny", seed=7, workers=1), progress=False)
    for split in ("train", "test", "dev"):
        names = ["wav.scp", "utt2spk", "spk2utt", "visual.npy", "visual_utts.txt"]
        names += ["trials"] if split != "train" else []
        for name in names:
            assert (out / split / name).read_bytes() == (again / split / name).read_bytes(), name
        for utt, rel in _read_lines(out / split / "wav.scp"):
            assert (out / split / rel).read_bytes() == (again / split / rel).read_bytes(), utt


def test_the_dev_split_leaves_train_and_test_as_they_were(tiny, tmp_path):
    """Dev speakers come after the test speakers and draw their trials from a stream of
    their own: a corpus without a dev split has the same train and test files."""
    out, cfg = tiny
    plain = tmp_path / "plain"
    synthesize(plain, SynthConfig.preset("tiny", seed=7, n_dev_speakers=0), progress=False)
    assert not (plain / "dev").exists()
    for split in ("train", "test"):
        for name in ["wav.scp", "utt2spk", "visual.npy"] + (["trials"] if split == "test" else []):
            assert (out / split / name).read_bytes() == (plain / split / name).read_bytes(), (split, name)
    first_dev = cfg.n_train_speakers + cfg.n_test_speakers + 1
    assert _read_lines(out / "dev" / "spk2utt")[0][0] == f"spk{first_dev:04d}"


def test_cli_sets_the_dev_split_size(tiny, tmp_path, capsys):
    """`cdino corpus synth --dev-speakers N --dev-trials M`: a larger dev split, train and test unchanged."""
    from cdino.cli import main

    out, cfg = tiny
    big = tmp_path / "big"
    assert main(["corpus", "synth", "--preset", "tiny", "--seed", "7", "--dev-speakers", "3",
                 "--dev-trials", "30", "--out", str(big)]) == 0
    assert len(_read_lines(big / "dev" / "spk2utt")) == 3 != cfg.n_dev_speakers
    assert len(_read_lines(big / "dev" / "trials")) == 30
    assert (big / "test" / "trials").read_bytes() == (out / "test" / "trials").read_bytes()
    capsys.readouterr()
    assert main(["corpus", "synth", "--preset", "tiny", "--dev-speakers", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "n_dev_speakers" in capsys.readouterr().err


def test_other_seed_other_corpus(tiny, tmp_path):
    out, _ = tiny
    other = tmp_path / "other"
    synthesize(other, SynthConfig.preset("tiny", seed=8), progress=False)
    rel = "wav/spk0001/sess1_utt01.wav"
    assert (out / "train" / rel).read_bytes() != (other / "train" / rel).read_bytes()
    assert (out / "test" / "trials").read_bytes() != (other / "test" / "trials").read_bytes()
    visual = "train/visual.npy"
    assert (out / visual).read_bytes() != (other / visual).read_bytes()


# --------------------------------------------------------------------------- parts

def test_speakers_vary():
    speakers = [make_speaker(0, i) for i in range(1, 61)]
    assert {s.gender for s in speakers} == {"m", "f"}
    assert len({s.accent for s in speakers}) >= 5
    assert len({s.base_variant for s in speakers}) >= 15
    assert all(0.88 <= s.vtl_alpha <= 1.12 for s in speakers)
    assert len({s.variant_text for s in speakers}) == 60
    assert make_speaker(0, 5) == make_speaker(0, 5) and make_speaker(1, 5) != make_speaker(0, 5)


def test_trials_need_enough_pairs_and_are_reproducible():
    cfg = SynthConfig(n_test_speakers=3, sessions_per_speaker=2, utts_per_session=2, n_trials=20)
    utts = [(f"spk{s}-s{k}-u{u}", f"spk{s}", k) for s in range(3) for k in (1, 2) for u in (1, 2)]
    trials = make_trials(cfg, utts)
    assert trials == make_trials(cfg, utts)
    assert sum(y for _, _, y in trials) == 10  # 3 speakers x 4 cross-session pairs = 12
    with pytest.raises(ConfigError, match="n_trials"):
        SynthConfig(n_test_speakers=3, sessions_per_speaker=2, utts_per_session=2,
                    n_trials=30).validate()


def test_face_proxy_is_informative_but_imperfect():
    cfg = SynthConfig(visual_missing=0.15)
    utts = [(f"spk{s:03d}-s{k}-u{u}", s, k, u) for s in range(1, 101) for k in range(1, 5)
            for u in range(1, 6)]
    ids, emb = make_visual(cfg, utts)
    missing = 1 - len(ids) / len(utts)
    assert 0.07 < missing < 0.25
    spk = np.array([u.split("-")[0] for u in ids])
    sess = np.array([u.split("-")[1] for u in ids])
    cos = emb @ emb.T
    same = (spk[:, None] == spk[None]) & (sess[:, None] != sess[None])
    diff = spk[:, None] != spk[None]
    assert cos[same].mean() - cos[diff].mean() > 0.2  # informative
    cos[(spk[:, None] == spk[None]) & (sess[:, None] == sess[None])] = -2
    nearest_right = (spk[np.argmax(cos, axis=1)] == spk).mean()  # in another session
    assert 0.5 < nearest_right < 0.95  # but far from perfect


def test_config_is_strict():
    assert SynthConfig.preset("quick").n_train_speakers < SynthConfig().n_train_speakers
    assert SynthConfig().n_trials >= 20000 and SynthConfig().n_test_speakers >= 80
    with pytest.raises(ConfigError, match="unknown corpus preset 'huge'"):
        SynthConfig.preset("huge")
    with pytest.raises(ConfigError, match="n_speakers"):
        SynthConfig.preset("tiny", n_speakers=3)
    with pytest.raises(ConfigError, match="sessions_per_speaker"):
        from_dict(SynthConfig, {"sessions_per_speaker": 1})
    with pytest.raises(ConfigError, match="min_utt_seconds"):
        from_dict(SynthConfig, {"min_utt_seconds": 5.0, "max_utt_seconds": 2.0})
    with pytest.raises(ConfigError, match="visul_dim"):
        from_dict(SynthConfig, {"visul_dim": 3})
    assert from_dict(SynthConfig, {"snr_db": [0, 10]}).snr_db == (0.0, 10.0)


def test_equaliser_sections_have_the_asked_gains():
    from scipy import signal

    from cdino.corpus.synth import _biquad
    for kind, f0, gain, probe in (("peaking", 1000, 6.0, 1000), ("peaking", 800, -5.0, 800),
                                  ("lowshelf", 300, 5.0, 1e-3), ("highshelf", 3000, -4.0, 7999)):
        _, h = signal.sosfreqz(_biquad(kind, f0, gain)[None], worN=[probe], fs=16000)
        assert abs(20 * np.log10(abs(h[0])) - gain) < 0.05, kind
