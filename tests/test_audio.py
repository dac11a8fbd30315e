"""Audio reading: formats, mix-down, resampling, and every refusal with its message."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from cdino.data.audio import SAMPLE_RATE, SkippedFiles, audio_info, decode_audio, encode_audio, \
    load_audio, load_audio_or_skip, write_audio
from cdino.errors import AudioError, CdinoError


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spec)])


def test_wav_and_flac_round_trip_within_16bit(tmp_path):
    wave = tone(440, 0.5, SAMPLE_RATE)
    for name in ("a.wav", "a.flac"):
        write_audio(tmp_path / name, wave)
        back = load_audio(tmp_path / name)
        assert back.dtype == np.float32 and back.shape == wave.shape
        assert np.max(np.abs(back - wave)) <= 1.0 / 32768 + 1e-7
    info = audio_info(tmp_path / "a.flac")
    assert (info.frames, info.sample_rate, info.channels) == (8000, SAMPLE_RATE, 1)
    assert info.duration == pytest.approx(0.5)
    assert not list(tmp_path.glob("*.tmp"))


def test_write_clips_instead_of_wrapping(tmp_path):
    wave = np.array([0.0, 1.5, -2.0, 0.25], dtype=np.float32)
    write_audio(tmp_path / "c.wav", wave)
    back = load_audio(tmp_path / "c.wav")
    assert back[1] > 0.99 and back[2] == -1.0 and back[3] == pytest.approx(0.25, abs=1e-4)


def test_partial_read_in_samples(tmp_path):
    wave = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    write_audio(tmp_path / "p.wav", wave)
    part = load_audio(tmp_path / "p.wav", offset=100, frames=50)
    np.testing.assert_allclose(part, wave[100:150], atol=1 / 32768)
    assert load_audio(tmp_path / "p.wav", offset=990).size == 10
    with pytest.raises(AudioError, match="past the end"):
        load_audio(tmp_path / "p.wav", offset=1000)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_resampled_with_tone_kept(tmp_path, rate):
    seconds, freq = 1.0, 1000.0
    sf.write(tmp_path / "r.wav", tone(freq, seconds, rate), rate, subtype="PCM_16")
    out = load_audio(tmp_path / "r.wav")
    assert abs(out.size - seconds * SAMPLE_RATE) <= 1
    assert peak_frequency(out, SAMPLE_RATE) == pytest.approx(freq, abs=2.0)
    assert np.max(np.abs(out)) == pytest.approx(0.5, abs=0.02)
    # offset/frames are in output samples when the file is resampled
    assert load_audio(tmp_path / "r.wav", offset=1000, frames=500).size == 500


def test_stereo_mixed_down_to_mean(tmp_path):
    left, right = tone(300, 0.2, SAMPLE_RATE, 0.4), tone(700, 0.2, SAMPLE_RATE, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    out = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)
    assert audio_info(tmp_path / "s.wav").channels == 2


def test_missing_zero_length_and_folder(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: file not found"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"zero\.wav: empty file \(0 bytes\)"):
        load_audio(tmp_path / "zero.wav")
    with pytest.raises(AudioError, match="is a folder"):
        audio_info(tmp_path)


def test_truncated_header_and_truncated_data(tmp_path):
    write_audio(tmp_path / "full.wav", tone(440, 1.0, SAMPLE_RATE))
    raw = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "head.wav").write_bytes(raw[:30])
    with pytest.raises(AudioError, match=r"head\.wav: not a readable audio file"):
        load_audio(tmp_path / "head.wav")
    (tmp_path / "cut.wav").write_bytes(raw[:5000])
    with pytest.raises(AudioError, match=r"cut\.wav: truncated wav \(header announces 32000"):
        load_audio(tmp_path / "cut.wav")


def test_non_audio_file_and_one_line_message(tmp_path):
    (tmp_path / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    with pytest.raises(CdinoError) as err:
        load_audio(tmp_path / "notes.wav")
    msg = str(err.value)
    assert "notes.wav: not a readable audio file" in msg and "\n" not in msg
    with pytest.raises(AudioError, match="not a readable audio file"):
        audio_info(tmp_path / "notes.wav")


def test_m4a_refused_with_conversion_hint(tmp_path):
    (tmp_path / "x.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 100)
    with pytest.raises(AudioError, match=r"x\.m4a: \.m4a .*not decoded.*ffmpeg"):
        load_audio(tmp_path / "x.m4a")


def test_empty_and_too_short(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"empty\.wav: empty \(0 samples\)"):
        load_audio(tmp_path / "empty.wav")
    write_audio(tmp_path / "short.wav", np.zeros(100, np.float32))
    with pytest.raises(AudioError, match="too short: 100 samples < min_samples 400"):
        load_audio(tmp_path / "short.wav", min_samples=400)
    assert load_audio(tmp_path / "short.wav", min_samples=100).size == 100


def test_nan_samples_refused(tmp_path):
    wave = np.zeros(50, np.float32)
    wave[7] = np.nan
    sf.write(tmp_path / "nan.wav", wave, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_bytes_round_trip_and_corrupt_bytes():
    wave = tone(250, 0.1, SAMPLE_RATE)
    back = decode_audio(encode_audio(wave))
    assert np.max(np.abs(back - wave)) <= 1.0 / 32768 + 1e-7
    with pytest.raises(AudioError, match="member.flac: not a readable audio file"):
        decode_audio(b"garbage" * 10, name="member.flac")


def test_skipped_files_counts_and_writes(tmp_path):
    write_audio(tmp_path / "ok.wav", tone(440, 0.1, SAMPLE_RATE))
    (tmp_path / "bad.wav").write_text("not audio")
    write_audio(tmp_path / "short.wav", np.zeros(10, np.float32))
    skipped = SkippedFiles()
    assert skipped.summary() == "no files skipped"
    results = [load_audio_or_skip(tmp_path / n, min_samples=20, skipped=skipped)
               for n in ("ok.wav", "bad.wav", "missing.wav", "short.wav")]
    assert results[0] is not None and results[0].size == 1600
    assert results[1:] == [None, None, None]
    assert skipped.count == 3 == len(skipped)
    summary = skipped.summary()
    assert summary.startswith("3 files skipped (") and "too short" in summary
    assert "file not found" in summary and "bad.wav" in summary
    skipped.write(tmp_path / "out" / "skipped.tsv")
    rows = [line.split("\t") for line in
            (tmp_path / "out" / "skipped.tsv").read_text().splitlines()]
    assert [r[0].rsplit("/", 1)[-1] for r in rows] == ["bad.wav", "missing.wav", "short.wav"]
    assert rows[1][1] == "file not found"  # the reason without the path in front


def test_write_refuses_unknown_suffix(tmp_path):
    with pytest.raises(AudioError, match="use .wav or .flac"):
        write_audio(tmp_path / "x.mp3", np.zeros(10, np.float32))
