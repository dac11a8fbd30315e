"""Reading and writing audio: mono float32 waveforms at 16 kHz.

Files are decoded by libsndfile (through ``soundfile``): wav, flac and ogg/vorbis. m4a/AAC
(VoxCeleb2 as distributed; suffixes ``FFMPEG_SUFFIXES``), and any file libsndfile fails on,
is decoded by FFmpeg through PyAV (the ``av`` wheel bundles FFmpeg) instead. Multi-channel
audio is mixed down to mono (mean of the channels); any other sample rate is converted with
``soxr`` (high quality), whichever decoder read it. Every failure is an :class:`AudioError`
whose message names the file; :func:`load_audio_or_skip` turns those into a count instead,
so one bad file among a million does not end a run.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from cdino.atomic import replacing, write_lines
from cdino.console import progress_bar
from cdino.errors import AudioError

SAMPLE_RATE = 16000

#: Suffixes libsndfile cannot decode: read by FFmpeg (PyAV) directly. Files with other
#: suffixes go to FFmpeg only when libsndfile fails on them.
FFMPEG_SUFFIXES = (".m4a", ".aac", ".mp4")

#: Formats :func:`write_audio` writes, by suffix.
_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}

# libsndfile reports "data : <announced> (should be <present>)" for a cut-off wav.
_WAV_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers put a placeholder length near 2**31 or 2**32 into the header.
_PLACEHOLDER_SIZE = 0x7F000000

PathLike = str | os.PathLike


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says: length in frames, rate, channel count, seconds."""

    frames: int
    sample_rate: int
    channels: int
    duration: float


def _check_file(name: str) -> None:
    """Raise ``AudioError`` for what can be told without decoding: missing, empty, a folder."""
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise AudioError(f"{name}: file not found") from None
    except OSError as exc:
        raise AudioError(f"{name}: cannot open ({exc.strerror or exc})") from None
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a folder, not an audio file")
    if st.st_size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")


def _by_ffmpeg(name: str) -> bool:
    """Whether a file goes to FFmpeg first (its suffix is one libsndfile cannot read)."""
    return os.path.splitext(name)[1].lower() in FFMPEG_SUFFIXES


def _pyav(name: str):
    try:
        import av
    except ImportError:  # a dependency; only a broken install lacks it
        raise AudioError(f"{name}: decoding this file needs PyAV (pip install av)") from None
    return av


def _ffmpeg_detail(exc: Exception) -> str:
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(detail).split())[:200]


def _header_frames(container, stream) -> int | None:
    """Length in samples that an MP4/M4A container's sample table gives, else ``None``."""
    if not container.format.name.startswith("mov") or not stream.duration or not stream.time_base:
        return None
    return int(round(float(stream.duration * stream.time_base) * stream.rate))


def _open_audio_stream(container, name: str):
    if not container.streams.audio:
        raise AudioError(f"{name}: not a readable audio file (no audio stream)")
    return container.streams.audio[0]


def _ffmpeg_decode(name: str) -> tuple[np.ndarray, int]:
    """Decode a whole file with FFmpeg (PyAV): a (frames, channels) float32 array and its rate.

    MP4/M4A files are cut to the length their sample table gives (what :func:`audio_info`
    reports): AAC decodes in whole 1024-sample frames, padded with silence at the end."""
    av = _pyav(name)
    chunks, rate = [], 0
    try:
        with av.open(name, metadata_errors="ignore") as container:
            stream = _open_audio_stream(container, name)
            resampler = av.AudioResampler(format="fltp")  # planar float32, rate and layout kept
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    rate = out.sample_rate
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
            limit = _header_frames(container, stream)
            rate = rate or int(stream.rate or 0)
        data = np.concatenate(chunks, axis=1).T if chunks else np.zeros((0, 1), np.float32)
    except AudioError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(f"{name}: not a readable audio file ({_ffmpeg_detail(exc)})") from None
    if limit is not None and 0 < limit < data.shape[0]:
        data = data[:limit]
    if rate <= 0:
        raise AudioError(f"{name}: not a readable audio file (no sample rate)")
    return np.ascontiguousarray(data, dtype=np.float32), rate


def _ffmpeg_info(name: str) -> AudioInfo:
    """:class:`AudioInfo` from FFmpeg: from the header for MP4/M4A, else by decoding."""
    av = _pyav(name)
    try:
        with av.open(name, metadata_errors="ignore") as container:
            stream = _open_audio_stream(container, name)
            frames, rate = _header_frames(container, stream), int(stream.rate or 0)
            channels = len(stream.codec_context.layout.channels)
    except AudioError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(f"{name}: not a readable audio file ({_ffmpeg_detail(exc)})") from None
    if frames is None or rate <= 0:
        data, rate = _ffmpeg_decode(name)
        frames, channels = data.shape
    return AudioInfo(int(frames), rate, int(channels), frames / rate)


def _decode_error(name: str, exc: Exception) -> AudioError:
    detail = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    return AudioError(f"{name}: not a readable audio file ({detail})")


def _check_truncated_wav(f: sf.SoundFile, name: str) -> None:
    """A wav whose header announces more audio data than the file holds was cut off."""
    if f.format != "WAV":
        return
    m = _WAV_DATA_SIZE.search(f.extra_info)
    if m is None:
        return
    announced, present = int(m.group(1)), int(m.group(2))
    if present < announced < _PLACEHOLDER_SIZE:
        raise AudioError(
            f"{name}: truncated wav (header announces {announced} bytes of audio, "
            f"the file holds {present})"
        )


def _read(f: sf.SoundFile, name: str, sample_rate: int, offset: int, frames: int
          ) -> tuple[np.ndarray, bool]:
    """Decode ``f`` to a (frames, channels) float32 array; True when already sliced."""
    _check_truncated_wav(f, name)
    if f.samplerate == sample_rate and (offset or frames >= 0):
        if offset:
            if f.frames > 0 and offset >= f.frames:
                raise AudioError(f"{name}: offset {offset} is past the end ({f.frames} samples)")
            f.seek(offset)
        return f.read(frames, dtype="float32", always_2d=True), True
    return f.read(dtype="float32", always_2d=True), False


def resample(wave: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited sample-rate conversion (soxr, high quality) of a 1-D float32 wave."""
    if orig_rate == target_rate:
        return wave
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    out = soxr.resample(wave, orig_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def _finish(data: np.ndarray, file_rate: int, subtype: str, name: str, sample_rate: int,
            offset: int, frames: int, sliced: bool, min_samples: int) -> np.ndarray:
    """Mix down, check, resample and slice a decoded (frames, channels) array."""
    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if subtype in ("FLOAT", "DOUBLE") and wave.size and not np.isfinite(wave).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    if file_rate != sample_rate and wave.size:
        wave = resample(wave, file_rate, sample_rate)
    if not sliced and (offset or frames >= 0):
        if offset and offset >= wave.size > 0:
            raise AudioError(f"{name}: offset {offset} is past the end ({wave.size} samples)")
        wave = wave[offset:] if frames < 0 else wave[offset:offset + frames]
    if wave.size == 0:
        raise AudioError(f"{name}: empty (0 samples)")
    if wave.size < min_samples:
        raise AudioError(f"{name}: too short: {wave.size} samples < min_samples {min_samples}")
    return wave


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE, *, offset: int = 0,
               frames: int = -1, min_samples: int = 1) -> np.ndarray:
    """Read an audio file as a mono float32 wave in [-1, 1] at ``sample_rate``.

    ``offset`` and ``frames`` (-1: to the end) select a part in samples at ``sample_rate``;
    when the file already has that rate only that part is read from disk, otherwise the
    whole file is decoded, resampled and then sliced.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    name = os.fspath(path)
    _check_file(name)
    if _by_ffmpeg(name):
        data, file_rate = _ffmpeg_decode(name)
        return _finish(data, file_rate, "FLOAT", name, sample_rate, offset, frames, False,
                       min_samples)
    try:
        with sf.SoundFile(name) as f:
            data, sliced = _read(f, name, sample_rate, offset, frames)
            file_rate, subtype = f.samplerate, f.subtype
    except (sf.SoundFileError, RuntimeError) as exc:
        error = _decode_error(name, exc)
        try:  # a format libsndfile lacks (e.g. AAC with another suffix): FFmpeg may read it
            data, file_rate = _ffmpeg_decode(name)
        except AudioError:
            raise error from None
        return _finish(data, file_rate, "FLOAT", name, sample_rate, offset, frames, False,
                       min_samples)
    return _finish(data, file_rate, subtype, name, sample_rate, offset, frames, sliced,
                   min_samples)


def decode_audio(data: bytes, sample_rate: int = SAMPLE_RATE, *, name: str = "<bytes>",
                 offset: int = 0, frames: int = -1, min_samples: int = 1) -> np.ndarray:
    """Decode an in-memory audio file (e.g. a flac member of a shard) like :func:`load_audio`
    (``offset``/``frames`` as there)."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            arr, sliced = _read(f, name, sample_rate, offset, frames)
            file_rate, subtype = f.samplerate, f.subtype
    except (sf.SoundFileError, RuntimeError) as exc:
        raise _decode_error(name, exc) from None
    return _finish(arr, file_rate, subtype, name, sample_rate, offset, frames, sliced, min_samples)


def audio_info(path: PathLike) -> AudioInfo:
    """Header information of an audio file (no decoding, except for files FFmpeg reads
    whose container gives no length: those are decoded to count their samples)."""
    name = os.fspath(path)
    _check_file(name)
    if _by_ffmpeg(name):
        return _ffmpeg_info(name)
    try:
        info = sf.info(name)
    except (sf.SoundFileError, RuntimeError) as exc:
        error = _decode_error(name, exc)
        try:
            return _ffmpeg_info(name)
        except AudioError:
            raise error from None
    rate = int(info.samplerate)
    return AudioInfo(int(info.frames), rate, int(info.channels), info.frames / rate)


def probe_lengths(paths: Sequence[str], sample_rate: int = SAMPLE_RATE, *,
                  threads: int | None = None, progress: bool = False,
                  desc: str = "reading audio headers") -> list[int | AudioError]:
    """Length in samples at ``sample_rate`` of each file, from its header (no decoding),
    read by a thread pool; an unreadable file gives its ``AudioError`` instead."""

    def one(path: str) -> int | AudioError:
        try:
            info = audio_info(path)
        except AudioError as exc:
            return exc
        return int(round(info.frames * sample_rate / info.sample_rate))

    if threads is None:
        threads = min(32, 4 * (os.cpu_count() or 1))
    if len(paths) < 64 or threads <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(progress_bar(pool.map(one, paths, chunksize=256), total=len(paths), desc=desc,
                                 unit=" files", show=progress, leave=False))


def _as_pcm_ready(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D wave, got shape {wave.shape}")
    # libsndfile wraps around (does not clip) out-of-range floats when writing integers.
    return np.clip(wave, -1.0, 32767.0 / 32768.0)


def encode_audio(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, format: str = "FLAC") -> bytes:
    """A 1-D wave as the bytes of a 16-bit PCM ``FLAC`` or ``WAV`` file."""
    buf = io.BytesIO()
    sf.write(buf, _as_pcm_ready(wave), sample_rate, format=format, subtype="PCM_16")
    return buf.getvalue()


def write_audio(path: PathLike, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a 1-D float wave as 16-bit PCM ``.wav`` or ``.flac`` (by suffix), atomically."""
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: cannot write '{path.suffix}' audio (use .wav or .flac)")
    with replacing(path) as tmp:
        sf.write(tmp, _as_pcm_ready(wave), sample_rate, format=fmt, subtype="PCM_16")


class SkippedFiles:
    """Files left out of a long run, with the reason for each.

    Used by loaders with :func:`load_audio_or_skip`; each process (data-loader worker)
    keeps its own record.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: PathLike, reason: str) -> None:
        """Record that ``path`` was skipped because of ``reason`` (one line)."""
        self.items.append((os.fspath(path), " ".join(str(reason).split())))

    @property
    def count(self) -> int:
        """How many files were skipped."""
        return len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        """One line: how many were skipped, grouped by reason, and the first one."""
        if not self.items:
            return "no files skipped"
        kinds = Counter(_reason_kind(r) for _, r in self.items)
        grouped = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
        first_path, first_reason = self.items[0]
        noun = "file" if len(self.items) == 1 else "files"
        return f"{len(self.items)} {noun} skipped ({grouped}); first: {first_path}: {first_reason}"

    def write(self, path: PathLike) -> None:
        """Write ``path<TAB>reason`` lines, atomically."""
        write_lines(path, (f"{p}\t{reason}" for p, reason in self.items))


def _reason_kind(reason: str) -> str:
    """The kind of a reason without its details ("too short: 3 samples < ..." → "too short")."""
    return reason.split(":")[0].split("(")[0].strip()


def load_audio_or_skip(path: PathLike, sample_rate: int = SAMPLE_RATE, *, offset: int = 0,
                       frames: int = -1, min_samples: int = 1,
                       skipped: SkippedFiles) -> np.ndarray | None:
    """:func:`load_audio`, but a bad file is recorded in ``skipped`` and gives ``None``."""
    try:
        return load_audio(path, sample_rate, offset=offset, frames=frames,
                          min_samples=min_samples)
    except AudioError as exc:
        message, prefix = str(exc), f"{os.fspath(path)}: "
        skipped.add(path, message[len(prefix):] if message.startswith(prefix) else message)
        return None
