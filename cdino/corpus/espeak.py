"""Formant speech synthesis with espeak-ng, through its C library (ctypes).

The library and its voice data come from the ``espeakng-loader`` wheel, so nothing
needs installing system-wide. espeak-ng keeps global state, so each process
initialises its own engine on first use (forked and spawned workers both work);
calls within a process are serialised by a lock.

    wave, sr = synthesize("The birch canoe slid on the smooth planks.", "en-us+f2",
                          rate=160, pitch=55, pitch_range=60)

A voice is a language voice (``en``, ``en-us``, ``en-gb-scotland`` ...) optionally
followed by ``+variant`` (``m1``..``m8``, ``f1``..``f5`` and the other files of
``espeak-ng-data/voices/!v``). A caller may also pass the text of its own variant
file (``variant_text``: ``pitch``, ``formant``, ``flutter``, ``breath`` ... lines in
espeak-ng's voice-file format) to give a speaker an individual vocal tract.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import soxr

from cdino.errors import CdinoError

# espeak-ng's C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_EE_OK = 0
_BUFFER_MS = 1000

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


class EspeakError(CdinoError):
    """espeak-ng cannot be loaded or refuses a voice."""


def data_path() -> Path:
    """The ``espeak-ng-data`` folder shipped with ``espeakng-loader``."""
    try:
        import espeakng_loader
        return Path(espeakng_loader.get_data_path())
    except (ImportError, RuntimeError) as exc:
        raise EspeakError(f"espeak-ng data not found ({exc}); install the 'espeakng-loader' "
                          "package") from None


def library_path() -> Path:
    """The ``libespeak-ng`` shared library shipped with ``espeakng-loader``."""
    try:
        import espeakng_loader
        return Path(espeakng_loader.get_library_path())
    except ImportError as exc:
        raise EspeakError(f"espeak-ng library not found ({exc}); install the "
                          "'espeakng-loader' package") from None


def available_voices() -> list[str]:
    """Language voices that :func:`synthesize` accepts, lower-case (``en-gb-x-rp`` ...)."""
    names = []
    for path in sorted((data_path() / "lang").rglob("*")):
        if path.is_file():
            names.append(path.name.lower())
    return sorted(set(names))


def available_variants() -> list[str]:
    """Voice variants (``m3``, ``f2``, ``klatt4`` ...) from ``voices/!v``."""
    return sorted(p.name for p in (data_path() / "voices" / "!v").iterdir() if p.is_file())


def read_variant(name: str) -> str:
    """The text of a built-in variant file, a starting point for ``variant_text``."""
    path = data_path() / "voices" / "!v" / name
    if not path.is_file():
        raise EspeakError(f"espeak-ng variant '{name}' not found in {path.parent}")
    return path.read_text(encoding="utf-8", errors="replace")


def _private_home(source: Path) -> Path | None:
    """A data folder mirroring ``source`` whose ``voices/!v`` is writable.

    espeak-ng looks variants up by name under its data folder only, so custom variants
    need a data folder of our own: links to the shipped files plus a real ``voices/!v``.
    It is built once per user and data version, atomically, and then reused.
    """
    try:
        stamp = f"{source.resolve()}:{(source / 'phondata').stat().st_mtime_ns}"
        key = hashlib.sha1(stamp.encode()).hexdigest()[:10]
        uid = os.getuid() if hasattr(os, "getuid") else 0
        home = Path(tempfile.gettempdir()) / f"cdino-espeak-{uid}-{key}"
        if (home / "voices" / "!v" / "m1").exists():
            return home if _owned(home, uid) else None
        build = Path(tempfile.mkdtemp(prefix=home.name + ".", dir=home.parent))
        for entry in source.iterdir():
            if entry.name != "voices":
                _link_or_copy(entry, build / entry.name)
        for entry in (source / "voices").iterdir():
            if entry.name != "!v":
                _link_or_copy(entry, build / "voices" / entry.name)
        variants = build / "voices" / "!v"
        variants.mkdir(parents=True)
        for entry in (source / "voices" / "!v").iterdir():
            _link_or_copy(entry, variants / entry.name)
        try:
            os.rename(build, home)
        except OSError:  # another process finished first
            shutil.rmtree(build, ignore_errors=True)
    except OSError:
        return None
    return home if (home / "voices" / "!v" / "m1").exists() and _owned(home, uid) else None


def _owned(path: Path, uid: int) -> bool:
    """Whether ``path`` belongs to this user (never write into another user's folder)."""
    return not hasattr(os, "getuid") or path.stat().st_uid == uid


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst, target_is_directory=src.is_dir())
    except OSError:
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


class _Engine:
    """One process's espeak-ng instance (synchronous mode, samples via a callback)."""

    def __init__(self) -> None:
        lib_file = library_path()
        try:
            lib = ctypes.CDLL(str(lib_file))
        except OSError as exc:
            raise EspeakError(f"cannot load the espeak-ng library {lib_file} ({exc}); "
                              "reinstall the 'espeakng-loader' package") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        # espeak-ng draws noise from its own generator and from the C library's rand().
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            libc.srand.argtypes = [ctypes.c_uint]
            libc.srand.restype = None
        except (OSError, TypeError, AttributeError):
            libc = None
        self.libc = libc

        source = data_path()
        self.home = _private_home(source)
        root = self.home or source
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, str(root).encode(),
                                     _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak-ng failed to initialise with data folder {root}")
        self.lib = lib
        self.sample_rate = int(rate)
        self.known_variants = set(available_variants())
        self._chunks: list[bytes] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference alive
        lib.espeak_SetSynthCallback(self._callback)
        self._counter = itertools.count()

    def _collect(self, wave, n_samples, events) -> int:
        if n_samples > 0 and wave:
            self._chunks.append(ctypes.string_at(wave, n_samples * 2))
        return 0

    def set_voice(self, voice: str, variant_text: str | None, deterministic: bool) -> None:
        name, _, variant = voice.partition("+")
        if variant_text is not None and variant:
            raise ValueError(f"voice '{voice}' names a variant and variant_text is given too")
        if variant and variant not in self.known_variants:
            raise EspeakError(f"espeak-ng variant '{variant}' not found (known: "
                              f"{', '.join(sorted(self.known_variants)[:12])}, ...)")
        if deterministic:
            # flutter and roughness keep their phase from call to call inside espeak-ng.
            base = variant_text if variant_text is not None else (
                read_variant(variant) if variant else "")
            variant_text = base + "\nflutter 0\nroughness 0\n"
        custom = None
        if variant_text is not None:
            if self.home is None:
                raise EspeakError("espeak-ng variants of cdino need a writable temporary folder "
                                  f"({tempfile.gettempdir()}); set TMPDIR to one")
            custom = self.home / "voices" / "!v" / f"cdino-{os.getpid()}-{next(self._counter)}"
            text = variant_text if variant_text.lstrip().startswith("language") else (
                "language variant\n" + variant_text)
            custom.write_text(text, encoding="utf-8")
            variant = custom.name
        try:
            full = f"{name}+{variant}" if variant else name
            if self.lib.espeak_SetVoiceByName(full.encode()) != _EE_OK:
                english = ", ".join(v for v in available_voices() if v.startswith("en"))
                raise EspeakError(f"espeak-ng voice '{name}' not found (known: {english}, ...)")
        finally:
            if custom is not None:  # espeak-ng has read the file into its voice by now
                custom.unlink(missing_ok=True)

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int,
                   volume: int, variant_text: str | None, seed: int,
                   deterministic: bool) -> np.ndarray:
        self.set_voice(voice, variant_text, deterministic)
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch),
                             (_PARAM_RANGE, pitch_range), (_PARAM_VOLUME, volume)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self.lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
        if self.libc is not None:
            self.libc.srand(int(seed) & 0x7FFFFFFF)
        data = text.encode("utf-8")
        self._chunks = []
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0,
                                       _CHARS_UTF8 | _ENDPAUSE, None, None)
        if status != _EE_OK:
            raise EspeakError(f"espeak-ng failed to synthesise with voice '{voice}' "
                              f"(status {status})")
        samples = np.frombuffer(b"".join(self._chunks), dtype=np.int16)
        self._chunks = []
        return samples.astype(np.float32) / 32768.0


_ENGINE: tuple[int, _Engine] | None = None
_LOCK = threading.Lock()


def _reset_lock_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # a fork while another thread synthesises
    os.register_at_fork(after_in_child=_reset_lock_in_child)


def _engine() -> _Engine:
    """This process's engine, created on first use (again after a fork)."""
    global _ENGINE
    if _ENGINE is None or _ENGINE[0] != os.getpid():
        _ENGINE = (os.getpid(), _Engine())
    return _ENGINE[1]


def native_sample_rate() -> int:
    """The rate espeak-ng synthesises at (22050 Hz)."""
    with _LOCK:
        return _engine().sample_rate


def synthesize(text: str, voice: str = "en", rate: int = 175, pitch: int = 50,
               pitch_range: int = 50, *, volume: int = 100, variant_text: str | None = None,
               seed: int = 0, deterministic: bool = True,
               sample_rate: int | None = 16000) -> tuple[np.ndarray, int]:
    """Speak ``text``; return ``(wave, sample_rate)``, a float32 mono wave in [-1, 1].

    ``rate`` in words per minute (80–450), ``pitch`` and ``pitch_range`` 0–100 (50 is the
    voice's own), ``volume`` 0–200. ``variant_text`` is a variant file's content used in
    place of a ``+variant``. ``seed`` fixes espeak-ng's internal noise.

    espeak-ng keeps state from one call to the next: the phase of its pitch flutter and
    roughness above all. With ``deterministic`` (the default) both are switched off, and
    equal arguments then give equal samples for almost every voice whatever was
    synthesised before; a few voices (``en-gb-scotland`` is one) still carry some state
    inside the library, so bit-exact reproduction needs the same sequence of calls in a
    fresh process (what :mod:`cdino.corpus.synth` does). ``sample_rate=None`` returns
    espeak-ng's native rate (22050 Hz); otherwise the wave is resampled with soxr.
    """
    if not 80 <= rate <= 450:
        raise ValueError(f"rate {rate} outside 80..450 words per minute")
    for name, value, top in (("pitch", pitch, 100), ("pitch_range", pitch_range, 100),
                             ("volume", volume, 200)):
        if not 0 <= value <= top:
            raise ValueError(f"{name} {value} outside 0..{top}")
    with _LOCK:
        engine = _engine()
        wave = engine.synthesize(text, voice, rate, pitch, pitch_range, volume, variant_text, seed,
                                 deterministic)
        native = engine.sample_rate
    if sample_rate is None or sample_rate == native:
        return wave, native
    if wave.size == 0:
        return wave, int(sample_rate)
    out = soxr.resample(wave, native, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return out, int(sample_rate)
