"""Audio reading: formats, mix-down, resampling, and every refusal with its message."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from cdino.atomic import leftovers
from cdino.data.audio import SAMPLE_RATE, SkippedFiles, audio_info, decode_audio, encode_audio, \
    load_audio, load_audio_or_skip, write_audio
from cdino.errors import AudioError, CdinoError
from conftest import write_m4a


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
    assert not leftovers(tmp_path)


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


def test_m4a_aac_decoded_mixed_down_and_resampled(tmp_path):
    # VoxCeleb2 as it ships: AAC in .m4a. A 44.1 kHz stereo file, 440 Hz left, 1 kHz right.
    rate, n = 44100, 44100 + 777
    left, right = tone(440.0, n / rate, rate, 0.3), tone(1000.0, n / rate, rate, 0.3)
    path = write_m4a(tmp_path / "id00012" / "v1" / "00001.m4a", np.stack([left, right]), rate,
                     bit_rate=128000)
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (rate, 2)
    assert abs(info.frames - n) <= 1024 and info.duration == pytest.approx(info.frames / rate)
    native = load_audio(path, rate)
    assert native.dtype == np.float32 and native.ndim == 1
    assert native.size == info.frames  # the header's length is the decoded length
    # mono = mean of the channels: both tones at half level, nothing lost to a channel pick
    mix = (left + right) / 2
    k = 4096
    np.testing.assert_allclose(native[k:k + 8192], mix[k:k + 8192], atol=0.02)
    wave = load_audio(path)  # default 16 kHz
    assert abs(wave.size - round(info.frames * SAMPLE_RATE / rate)) <= 1
    spec = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    freqs = np.fft.rfftfreq(wave.size, 1 / SAMPLE_RATE)
    assert sorted(freqs[np.argsort(spec)[-1:-3:-1]].round(-1)) == pytest.approx([440, 1000], abs=15)
    part = load_audio(path, offset=1000, frames=3000)
    np.testing.assert_array_equal(part, wave[1000:4000])


def test_m4a_at_16k_keeps_its_samples_and_other_suffixes_fall_back_to_ffmpeg(tmp_path):
    rng = np.random.default_rng(0)
    x = np.convolve(rng.standard_normal(20000), np.ones(8) / 8, "same").astype(np.float32)
    x = 0.3 * x / np.abs(x).max()
    path = write_m4a(tmp_path / "a.m4a", x, SAMPLE_RATE, bit_rate=128000)
    got = load_audio(path)
    assert got.size == audio_info(path).frames and abs(got.size - x.size) <= 1024
    # aligned with the original (encoder priming removed) and close to it
    assert np.corrcoef(got[:19000], x[:19000])[0, 1] > 0.98
    # AAC under a suffix libsndfile tries first: read by FFmpeg once libsndfile fails
    other = tmp_path / "a.audio"
    other.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(load_audio(other), got)
    assert audio_info(other).frames == got.size


def test_corrupt_m4a_is_an_audio_error_naming_the_file(tmp_path):
    bad = tmp_path / "x.m4a"
    bad.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 100)
    for read in (load_audio, audio_info):
        with pytest.raises(AudioError, match=r"x\.m4a: not a readable audio file") as err:
            read(bad)
        assert "\n" not in str(err.value)
    good = write_m4a(tmp_path / "g.m4a", tone(300.0, 1.0, SAMPLE_RATE))
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(good.read_bytes()[:200])  # header cut off: no sample table
    with pytest.raises(AudioError, match=r"cut\.m4a: "):
        load_audio(cut)
    skipped = SkippedFiles()
    assert load_audio_or_skip(bad, skipped=skipped) is None and skipped.count == 1


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
