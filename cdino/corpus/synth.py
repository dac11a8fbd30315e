"""The built-in simulated multi-speaker corpus.

No real corpus can be downloaded, so cdino synthesises one: espeak-ng speakers, each
with an accent, a voice variant with its own formants, pitch, speaking rate, vocal-tract
length and voice quality, recorded in several sessions; each session is a channel
(band limits, equaliser, room reverberation, additive noise, gain). A simulated
"face embedding" per utterance stands in for the visual modality.

    cfg = SynthConfig.preset("quick")
    summary = synthesize("data/sim", cfg)
    target = synthesize("data/sim_tel", SynthConfig.preset("quick", domain="telephone"))

A **domain** (:data:`DOMAINS`, ``SynthConfig.domain``) fixes what differs between
corpora the way real domains differ: the talkers' espeak-ng languages, the speakers
themselves (every seed of a domain's speakers is offset, and its speaker ids carry its
own prefix, so no speaker of one domain recurs in another), the codecs of its telephone
sessions and its background-noise types; :meth:`SynthConfig.preset` also sets the
domain's channel mix (``telephone_prob``, ``reverb_prob``, ``snr_db`` ...). ``default``
is the English corpus; ``telephone`` is telephone calls in eight other languages. The
default domain draws exactly the random numbers it drew before domains existed: what a
domain adds comes from a stream of its own, so default corpora are unchanged bit for bit.

Layout (a contract other modules rely on)::

    DIR/corpus.json                      config + summary (written last)
    DIR/train/  DIR/test/  DIR/dev/      data folders, disjoint speakers (dev: labelled, for
                                         choosing settings; its speakers come after test's):
        wav.scp                          utt wav/spk0001/sess2_utt03.wav (relative)
        utt2spk  spk2utt  utt2dur        (utt2dur: exact lengths, so training reads no header)
        visual.npy  visual_utts.txt      (n, visual_dim) float32 rows and their utts
        wav/spk0001/sess2_utt03.wav      16 kHz 16-bit PCM
    DIR/test/trials  DIR/dev/trials      enroll test target|nontarget

Everything is drawn from random generators seeded by ``(seed, speaker, session,
utterance)``, so a seed gives the same files bit for bit whatever ``workers`` is.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from scipy import fft as sp_fft
from scipy import signal

from cdino.atomic import write_lines, write_text
from cdino.config import from_dict, to_dict
from cdino.console import progress_bar
from cdino.corpus import espeak
from cdino.data.kaldi_dir import format_seconds, write_visual
from cdino.errors import ConfigError

SAMPLE_RATE = 16000
FORMAT_VERSION = 1

# Streams of the seed tree: SeedSequence([seed, STREAM, ...]).
_SPEAKER, _SESSION, _UTTERANCE, _FACE_ID, _FACE_SESSION, _FACE_UTT, _TRIALS, _POSE, _CHANNEL, _DEV_TRIALS = range(10)


@dataclass
class SynthConfig:
    """Size and difficulty of the simulated corpus."""

    n_train_speakers: int = 250  # speakers in DIR/train (used without labels)
    n_test_speakers: int = 80  # speakers in DIR/test, disjoint from the training speakers
    sessions_per_speaker: int = 4  # recording sessions (each its own channel) per speaker
    utts_per_session: int = 5  # utterances per session
    min_utt_seconds: float = 2.0  # shortest utterance
    max_utt_seconds: float = 4.5  # longest utterance
    visual_dim: int = 128  # dimension of the simulated face embedding
    visual_missing: float = 0.15  # fraction of utterances without a face embedding
    visual_noise: float = 1.0  # face-proxy difficulty: scales session pose/lighting and utterance noise (1: face-only EER ~10 % on the default test trials; 1.4: ~24 %)
    n_trials: int = 20000  # test trials, half target (cross-session), half non-target
    n_dev_speakers: int = 40  # labelled development speakers in DIR/dev (disjoint from train and test): recipe settings are chosen on their trials, never on the test trials; 0: no dev split
    n_dev_trials: int = 8000  # dev trials, half target (cross-session), half non-target
    snr_db: tuple[float, float] = (5.0, 30.0)  # range of a session's additive-noise SNR
    reverb_prob: float = 0.7  # probability that a session is reverberant
    rt60_s: tuple[float, float] = (0.15, 0.9)  # range of a reverberant session's RT60
    telephone_prob: float = 0.25  # probability that a session is narrow-band telephone
    eq_db: float = 6.0  # largest gain of a session's random equaliser bands
    seed: int = 0  # seed of everything (speakers, texts, channels, trials)
    workers: int = 0  # worker processes; 0 = os.cpu_count()
    domain: str = "default"  # languages, speakers, codecs and noises (DOMAINS: default | telephone); preset() also sets its channel mix

    def validate(self) -> None:
        for key in ("n_train_speakers", "sessions_per_speaker", "utts_per_session",
                    "visual_dim", "n_trials"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1, got {getattr(self, key)}")
        if self.n_test_speakers < 2:
            raise ConfigError(f"n_test_speakers: need at least 2 for non-target trials, "
                              f"got {self.n_test_speakers}")
        if self.sessions_per_speaker < 2:
            raise ConfigError("sessions_per_speaker: need at least 2 (target trials pair "
                              f"different sessions), got {self.sessions_per_speaker}")
        if not 0.5 <= self.min_utt_seconds <= self.max_utt_seconds:
            raise ConfigError(f"min_utt_seconds/max_utt_seconds: need 0.5 <= min <= max, got "
                              f"{self.min_utt_seconds}/{self.max_utt_seconds}")
        if self.max_utt_seconds > 30:
            raise ConfigError(f"max_utt_seconds: at most 30, got {self.max_utt_seconds}")
        if not 0.0 <= self.visual_missing < 1.0:
            raise ConfigError(f"visual_missing: must be in [0, 1), got {self.visual_missing}")
        if not 0.0 <= self.visual_noise <= 10.0:
            raise ConfigError(f"visual_noise: must be in [0, 10], got {self.visual_noise}")
        for key in ("reverb_prob", "telephone_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        for key, low in (("snr_db", -10.0), ("rt60_s", 0.05)):
            lo, hi = getattr(self, key)
            if not low <= lo <= hi:
                raise ConfigError(f"{key}: need {low} <= low <= high, got {[lo, hi]}")
        if not 0.0 <= self.eq_db <= 20.0:
            raise ConfigError(f"eq_db: must be in [0, 20], got {self.eq_db}")
        if self.seed < 0:
            raise ConfigError(f"seed: must be non-negative, got {self.seed}")
        if self.domain not in DOMAINS:
            raise ConfigError(f"domain: unknown domain '{self.domain}' (known: {', '.join(DOMAINS)})")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0 (0 = all cores), got {self.workers}")
        if self.n_dev_speakers == 1 or self.n_dev_speakers < 0:
            raise ConfigError(f"n_dev_speakers: 0 (no dev split) or at least 2, got {self.n_dev_speakers}")
        self._check_trials("n_trials", self.n_trials, self.n_test_speakers, "test")
        if self.n_dev_speakers:
            self._check_trials("n_dev_trials", self.n_dev_trials, self.n_dev_speakers, "dev")

    def _check_trials(self, key: str, n_trials: int, n_speakers: int, split: str) -> None:
        if n_trials < 2:
            raise ConfigError(f"{key}: need at least 2, got {n_trials}")
        available = n_speakers * self.utts_per_session ** 2 * (
            self.sessions_per_speaker * (self.sessions_per_speaker - 1) // 2)
        if n_trials // 2 > available:
            raise ConfigError(f"{key}: {n_trials} asks for {n_trials // 2} target "
                              f"trials but the {split} set has only {available} cross-session pairs")
        per_spk = self.sessions_per_speaker * self.utts_per_session
        n_utts = n_speakers * per_spk
        same_speaker = n_speakers * per_spk * (per_spk - 1) // 2
        different = n_utts * (n_utts - 1) // 2 - same_speaker
        if n_trials - n_trials // 2 > different:
            raise ConfigError(f"{key}: {n_trials} asks for more non-target trials than "
                              f"the {different} pairs of different {split} speakers")

    @classmethod
    def preset(cls, name: str, **overrides) -> SynthConfig:
        """A named size: ``default`` (demo), ``quick`` (~30 s to make) or ``tiny`` (tests);
        ``domain=NAME`` among the overrides also applies that domain's channel mix
        (:attr:`Domain.channel`), which further overrides replace."""
        presets = {
            "default": {},
            "quick": dict(n_train_speakers=40, n_test_speakers=20, min_utt_seconds=1.5,
                          max_utt_seconds=3.0, n_trials=4000, n_dev_speakers=10, n_dev_trials=2000),
            "tiny": dict(n_train_speakers=6, n_test_speakers=4, sessions_per_speaker=2,
                         utts_per_session=3, min_utt_seconds=0.8, max_utt_seconds=1.2,
                         n_trials=40, n_dev_speakers=2, n_dev_trials=20, workers=2),
        }
        if name not in presets:
            raise ConfigError(f"unknown corpus preset '{name}' (known: {', '.join(presets)})")
        domain = overrides.get("domain", "default")
        if domain not in DOMAINS:
            raise ConfigError(f"domain: unknown domain '{domain}' (known: {', '.join(DOMAINS)})")
        channel = dict(DOMAINS[domain].channel)
        return from_dict(cls, {**presets[name], **channel, **overrides})  # strict: types, keys, validate


# --------------------------------------------------------------------------- texts

_NAMES = ("Anna Ben Clara David Emma Frank Grace Henry Iris Jack Kate Leo Maria Nick Olga "
          "Peter Rosa Sam Tina Victor Walter Yusuf Zoe Martin Helen Oscar Julia Tom Lucy").split()
_ADJECTIVES = ("old new small large quiet noisy bright dark warm cold heavy light quick slow "
               "green yellow red blue brown clean empty full strange simple careful gentle "
               "narrow wide tired happy busy early late golden wooden broken famous hidden "
               "distant local rough smooth sharp soft fresh bitter sweet silver").split()
_NOUNS = ("house garden river market window table letter morning evening station teacher "
          "doctor kitchen bridge village forest mountain bottle basket ticket pocket camera "
          "engine island harbour library museum picture blanket candle carpet chicken "
          "dinner farmer hammer ladder mirror needle orange pencil rabbit saddle shadow "
          "sister tunnel valley wagon boat coat road field stone cloud song story paper "
          "office meeting problem answer question report machine student company number "
          "journey box bus brush glass church watch key toy").split()
_VERBS_PAST = ("found opened carried painted cleaned watched followed borrowed dropped "
               "moved pushed pulled sold bought built fixed lost kept left brought "
               "noticed visited described counted repaired covered checked").split()
_VERBS_BASE = ("find open carry paint clean watch follow borrow move sell buy build fix "
               "keep bring visit describe count repair cover check answer call finish").split()
_PLACES = ("near the station", "behind the house", "across the river", "under the bridge",
           "in the kitchen", "at the market", "by the window", "on the mountain",
           "inside the museum", "along the road", "in the village", "next to the library")
_TIMES = ("this morning", "last winter", "after dinner", "before the meeting", "on Sunday",
          "every evening", "yesterday", "in the summer", "at noon", "next week",
          "three days ago", "at half past seven")


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    return noun + "s"


def _clause(rng: np.random.Generator) -> str:
    """One statement from a template, its words drawn from the lists above."""
    def w(seq):
        return _pick(rng, seq)
    kind = int(rng.integers(6))
    if kind == 0:
        return f"the {w(_ADJECTIVES)} {w(_NOUNS)} {w(_VERBS_PAST)} the {w(_NOUNS)}"
    if kind == 1:
        return f"{w(_NAMES)} {w(_VERBS_PAST)} {_a(w(_ADJECTIVES))} {w(_NOUNS)} {w(_PLACES)}"
    if kind == 2:
        return f"we should {w(_VERBS_BASE)} the {w(_NOUNS)} {w(_TIMES)}"
    if kind == 3:
        return f"there were {int(rng.integers(2, 99))} {_plural(w(_NOUNS))} {w(_PLACES)}"
    if kind == 4:
        return f"{w(_NAMES)} and {w(_NAMES)} {w(_VERBS_PAST)} the {w(_NOUNS)} {w(_TIMES)}"
    return f"my {w(_NOUNS)} is {w(_ADJECTIVES)} but the {w(_NOUNS)} is {w(_ADJECTIVES)}"


def make_sentence(rng: np.random.Generator, n_words: int) -> str:
    """Random English text of about ``n_words`` words: statements and questions."""
    sentences, count = [], 0
    while count < n_words:
        if rng.random() < 0.15:
            text = (f"did you {_pick(rng, _VERBS_BASE)} the {_pick(rng, _ADJECTIVES)} "
                    f"{_pick(rng, _NOUNS)} {_pick(rng, _TIMES)}?")
        else:
            parts = [_clause(rng)]
            while count + sum(len(p.split()) for p in parts) < n_words and rng.random() < 0.4:
                parts.append(_clause(rng))
            text = _pick(rng, (", and ", ", but ", " because ", ", then ")).join(parts) + "."
        sentences.append(text[0].upper() + text[1:])
        count += len(text.split())
    return " ".join(sentences)


# --------------------------------------------------------------------------- speakers

ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc")
MALE_VARIANTS = tuple("m1 m2 m3 m4 m5 m6 m7 m8 Andy Lee Denis Diogo Henrique Hugo Marco "
                      "antonio michel miguel sandro travis victor john norbert pablo pedro "
                      "gustave ian grandpa paul quincy robert marcelo Michael Mario Mike ed "
                      "max Storm Gene Alex".split())
FEMALE_VARIANTS = tuple("f1 f2 f3 f4 f5 Alicia Andrea Annie anika belinda linda steph steph2 "
                        "steph3 grandma aunty shelby".split())
_VARIANT_KEYS = ("pitch", "formant", "flutter", "roughness", "breath", "name", "gender",
                 "language", "klatt")


# --------------------------------------------------------------------------- domains

# Latin-script languages: espeak-ng reads the English texts with their phonology (and
# speaks the numbers in the language), an accent and language shift from the default set.
TELEPHONE_ACCENTS = ("de", "fr", "es-419", "it", "pt-br", "nl", "pl", "tr")


@dataclass(frozen=True)
class Domain:
    """What sets one simulated domain apart from another."""

    accents: tuple[str, ...]  # espeak-ng language voices of its speakers and babble talkers
    speaker_prefix: str  # speaker ids PREFIX0001 ... (utterances PREFIX0001-s2-u03)
    speaker_offset: int  # added to the speaker numbers in every seed: other domains' speakers never recur
    codecs: tuple[tuple[str, float], ...]  # codec of a telephone session (mulaw | alaw | gsm) and its probability
    noises: tuple[tuple[str, float], ...]  # background noise kinds and probabilities (coloured | hum | babble | street | music | clicks)
    packet_loss: tuple[float, float]  # range of a telephone session's lost 20 ms frames (fraction; 0: none)
    channel: tuple[tuple[str, object], ...]  # SynthConfig fields SynthConfig.preset sets for the domain (its channel mix)

    @property
    def trial_key(self) -> tuple[int, ...]:
        """Extra seed words of the trial draw (none for the default domain)."""
        return (self.speaker_offset,) if self.speaker_offset else ()


DOMAINS: dict[str, Domain] = {
    # The English corpus (the demo's). Changing it changes every default corpus.
    "default": Domain(accents=ACCENTS, speaker_prefix="spk", speaker_offset=0,
                      codecs=(("mulaw", 1.0),),
                      noises=(("coloured", 0.55), ("hum", 0.15), ("babble", 0.30)),
                      packet_loss=(0.0, 0.0), channel=()),
    # Telephone calls in other languages: mostly 8 kHz band with G.711 or a GSM-like codec
    # and some lost frames, little reverberation, street / music / office-click noise.
    "telephone": Domain(accents=TELEPHONE_ACCENTS, speaker_prefix="tel", speaker_offset=1_000_000,
                        codecs=(("mulaw", 0.35), ("alaw", 0.35), ("gsm", 0.30)),
                        noises=(("street", 0.30), ("music", 0.20), ("clicks", 0.20),
                                ("babble", 0.20), ("coloured", 0.10)),
                        packet_loss=(0.0, 0.04),
                        channel=(("telephone_prob", 0.9), ("reverb_prob", 0.3), ("rt60_s", (0.1, 0.5)),
                                 ("snr_db", (3.0, 25.0)))),
}


@dataclass
class Speaker:
    """One simulated talker: the voice and how it is produced."""

    gender: str  # "m" or "f"
    accent: str  # espeak-ng language voice
    base_variant: str  # built-in variant the individual voice starts from
    variant_text: str  # the speaker's own espeak-ng variant (formants, pitch, breath)
    rate: float  # speaking rate, words per minute (before vocal-tract compensation)
    pitch_range: float  # espeak-ng intonation range parameter, 0..100
    vtl_alpha: float  # formant scaling from vocal-tract length (>1: shorter tract)
    tilt_db: float  # high-shelf gain above ~1.5 kHz: spectral tilt of the voice
    breath_db: float  # level of aspiration noise relative to the voice
    tremolo_depth: float  # amplitude modulation depth
    tremolo_hz: float
    vibrato_depth: float  # relative frequency modulation (slow jitter)
    vibrato_hz: float


def _seq(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _variant_text(rng: np.random.Generator, base: str, f0_low: float, f0_high: float,
                  klatt: int) -> str:
    """The speaker's own variant: the base variant with perturbed formants and pitch."""
    formants = {k: [100.0, 100.0, 100.0] for k in range(9)}
    lines = []
    for line in espeak.read_variant(base).splitlines():
        words = line.split()
        if not words or words[0].startswith("//"):
            continue
        if words[0] == "formant" and len(words) >= 5:
            try:
                formants[int(words[1])] = [float(w) for w in words[2:5]]
            except ValueError:
                pass
            continue
        if words[0] in _VARIANT_KEYS:
            continue
        lines.append(line.strip())
    out = ["language variant", "name cdino"]
    out.append(f"pitch {int(round(f0_low))} {int(round(f0_high))}")
    for k in range(9):
        freq, height, width = formants[k]
        if 1 <= k <= 5:
            freq *= float(np.clip(1 + 0.045 * rng.standard_normal(), 0.88, 1.12))
        height *= float(np.exp(0.15 * rng.standard_normal()))
        width *= float(np.exp(0.15 * rng.standard_normal()))
        out.append(f"formant {k} {int(round(freq))} {int(round(height))} {int(round(width))}")
    if rng.random() < 0.35:
        out.append("breath " + " ".join(str(int(v)) for v in rng.integers(0, 4, size=8)))
    if klatt:
        out.append(f"klatt {klatt}")
    return "\n".join(out + lines) + "\n"


def make_speaker(seed: int, index: int, domain: str = "default") -> Speaker:
    """Speaker number ``index`` of corpus ``seed``: the seed index, global over train and
    test and including the domain's :attr:`Domain.speaker_offset`; its accent is one of
    the domain's languages."""
    rng = _seq(seed, _SPEAKER, index)
    gender = "m" if rng.random() < 0.5 else "f"
    accent = _pick(rng, DOMAINS[domain].accents)
    base = _pick(rng, MALE_VARIANTS if gender == "m" else FEMALE_VARIANTS)
    if gender == "m":
        f0 = float(np.clip(95 * np.exp(0.16 * rng.standard_normal()), 65, 140))
        alpha = float(rng.uniform(0.88, 1.04))
    else:
        f0 = float(np.clip(165 * np.exp(0.13 * rng.standard_normal()), 125, 240))
        alpha = float(rng.uniform(0.97, 1.12))
    top = f0 * float(rng.uniform(1.25, 1.8))
    klatt = int(rng.integers(1, 4)) if rng.random() < 0.2 else 0
    # Playing the wave faster by alpha raises formants and F0 by alpha: ask for F0 / alpha.
    text = _variant_text(rng, base, f0 / alpha, top / alpha, klatt)
    breathy = rng.random() < 0.3
    return Speaker(
        gender=gender, accent=accent, base_variant=base, variant_text=text,
        rate=float(np.clip(165 * np.exp(0.12 * rng.standard_normal()), 115, 230)),
        pitch_range=float(rng.uniform(30, 80)), vtl_alpha=alpha,
        tilt_db=float(rng.uniform(-6, 3)),
        breath_db=float(rng.uniform(-24, -14) if breathy else rng.uniform(-45, -32)),
        tremolo_depth=float(rng.uniform(0, 0.08)), tremolo_hz=float(rng.uniform(3.5, 7)),
        vibrato_depth=float(rng.uniform(0, 0.01)), vibrato_hz=float(rng.uniform(4, 7)),
    )


# --------------------------------------------------------------------------- filters

def _biquad(kind: str, f0: float, gain_db: float, q: float = 0.707,
            fs: int = SAMPLE_RATE) -> np.ndarray:
    """One second-order section (RBJ audio-EQ formulas): peaking, lowshelf or highshelf."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * f0 / fs
    cos, alpha = math.cos(w0), math.sin(w0) / (2 * q)
    if kind == "peaking":
        b = [1 + alpha * a, -2 * cos, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cos, 1 - alpha / a]
    else:
        sq = 2 * math.sqrt(a) * alpha
        if kind == "lowshelf":
            b = [a * ((a + 1) - (a - 1) * cos + sq), 2 * a * ((a - 1) - (a + 1) * cos),
                 a * ((a + 1) - (a - 1) * cos - sq)]
            den = [(a + 1) + (a - 1) * cos + sq, -2 * ((a - 1) + (a + 1) * cos),
                   (a + 1) + (a - 1) * cos - sq]
        else:
            b = [a * ((a + 1) + (a - 1) * cos + sq), -2 * a * ((a - 1) + (a + 1) * cos),
                 a * ((a + 1) + (a - 1) * cos - sq)]
            den = [(a + 1) - (a - 1) * cos + sq, 2 * ((a - 1) - (a + 1) * cos),
                   (a + 1) - (a - 1) * cos - sq]
    return np.array(b + den, dtype=np.float64) / den[0]


def _speech_power(x: np.ndarray) -> float:
    """Mean power over the active (loud enough) 20 ms frames."""
    n = len(x) // 320
    if n == 0:
        return float(np.mean(x ** 2) + 1e-12)
    frames = np.mean(x[: n * 320].reshape(n, 320) ** 2, axis=1)
    active = frames[frames > frames.max() * 1e-3]
    return float(active.mean() + 1e-12)


# --------------------------------------------------------------------------- sessions

@dataclass
class Session:
    """One recording session of a speaker: room, noise and channel."""

    telephone: bool
    channel_sos: np.ndarray  # band limits + equaliser, second-order sections
    rir: np.ndarray | None  # room impulse response, None when dry
    noise_kind: str  # "coloured" | "hum" | "babble"
    noise_slope: float  # coloured noise: power spectrum ~ f ** -slope
    hum_hz: float
    hum_harmonics: np.ndarray
    babble: np.ndarray | None
    snr_db: float
    level_db: float  # RMS level of the recording, dBFS
    pitch: float  # the speaker's espeak-ng pitch parameter on that day (50 = own voice)
    rate_factor: float  # and speaking-rate factor
    codec: str = "mulaw"  # telephone codec: mulaw | alaw | gsm
    packet_loss: float = 0.0  # fraction of lost 20 ms telephone frames
    noise_rate: float = 0.0  # street: swell rate (Hz); music: notes per second; clicks: clicks per second
    noise_base_hz: float = 0.0  # music: the key's lowest note (Hz)


def _make_rir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """A synthetic room response: direct path, early reflections, decaying noise tail."""
    n = int(min(1.2 * rt60, 1.0) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    low = signal.sosfilt(signal.butter(2, 1500, fs=SAMPLE_RATE, output="sos"),
                         rng.standard_normal(n))
    high = rng.standard_normal(n) - low
    tail = low * np.exp(-6.9 * t / rt60) + high * np.exp(-6.9 * t / (0.6 * rt60))
    onset = int(rng.uniform(0.002, 0.006) * SAMPLE_RATE)
    tail[:onset] = 0.0
    drr_db = rng.uniform(-3, 12)
    tail *= math.sqrt(10 ** (-drr_db / 10) / (np.sum(tail ** 2) + 1e-12))
    rir = tail
    rir[0] += 1.0  # direct path
    for _ in range(int(rng.integers(4, 10))):  # early reflections
        k = int(rng.uniform(0.002, 0.04) * SAMPLE_RATE)
        decay = math.exp(-3 * k / SAMPLE_RATE / rt60)
        rir[k] += rng.choice([-1, 1]) * rng.uniform(0.1, 0.6) * decay
    return rir


def _babble(rng: np.random.Generator, seconds: float, accents: tuple[str, ...] = ACCENTS) -> np.ndarray:
    """Several random espeak-ng talkers speaking at once."""
    n = int(seconds * SAMPLE_RATE)
    mix = np.zeros(n)
    for _ in range(int(rng.integers(3, 6))):
        voice = f"{_pick(rng, accents)}+{_pick(rng, MALE_VARIANTS + FEMALE_VARIANTS)}"
        talk, _ = espeak.synthesize(make_sentence(rng, int(seconds * 3) + 2), voice,
                                    rate=int(rng.integers(140, 200)),
                                    pitch=int(rng.integers(30, 70)),
                                    seed=int(rng.integers(1 << 30)), sample_rate=SAMPLE_RATE)
        talk = talk[: n].astype(np.float64)
        talk /= math.sqrt(_speech_power(talk))
        start = int(rng.integers(0, max(1, n - len(talk) + 1)))
        mix[start:start + len(talk)] += talk
    return mix


def make_session(cfg: SynthConfig, index: int, session: int) -> Session:
    """Session ``session`` (1-based) of speaker ``index``: a channel drawn at random.

    The domain's codec, frame loss and noise parameters come from a stream of their own
    (``_CHANNEL``), so the draws of the default domain are those it always made."""
    domain = DOMAINS[cfg.domain]
    rng = _seq(cfg.seed, _SESSION, index, session)
    telephone = rng.random() < cfg.telephone_prob
    sos = []
    if telephone:
        lo, hi = rng.uniform(250, 400), rng.uniform(3100, 3500)
        sos.append(signal.butter(4, [lo, hi], btype="bandpass", fs=SAMPLE_RATE, output="sos"))
    else:
        sos.append(signal.butter(2, rng.uniform(40, 200), btype="highpass", fs=SAMPLE_RATE,
                                 output="sos"))
        if rng.random() < 0.6:
            sos.append(signal.butter(6, rng.uniform(3800, 7500), fs=SAMPLE_RATE, output="sos"))
    g = cfg.eq_db
    eq = [_biquad("lowshelf", rng.uniform(100, 400), rng.uniform(-g, g)),
          _biquad("highshelf", rng.uniform(2000, 5000), rng.uniform(-g, g))]
    for _ in range(3):
        eq.append(_biquad("peaking", float(np.exp(rng.uniform(np.log(200), np.log(6000)))),
                          rng.uniform(-g, g), q=rng.uniform(0.7, 2.5)))
    channel_sos = np.concatenate(sos + [np.stack(eq)], axis=0)
    rir = _make_rir(rng, rng.uniform(*cfg.rt60_s)) if rng.random() < cfg.reverb_prob else None
    kinds, probs = zip(*domain.noises)
    kind = kinds[int(rng.choice(len(kinds), p=list(probs)))]
    babble = _babble(rng, cfg.max_utt_seconds + 2.0, domain.accents) if kind == "babble" else None
    extra = _seq(cfg.seed, _CHANNEL, index, session)
    codecs, codec_probs = zip(*domain.codecs)
    codec = codecs[int(extra.choice(len(codecs), p=list(codec_probs)))]
    loss = float(extra.uniform(*domain.packet_loss)) if extra.random() < 0.5 else 0.0
    noise_rate = {"street": extra.uniform(0.05, 0.3), "music": extra.uniform(1.5, 4.0),
                  "clicks": extra.uniform(3.0, 10.0)}.get(kind, 0.0)
    return Session(
        telephone=telephone, channel_sos=channel_sos, rir=rir, noise_kind=kind,
        noise_slope=float(rng.uniform(-0.5, 2.0)), hum_hz=float(rng.choice([50.0, 60.0])),
        hum_harmonics=rng.uniform(0, 1, size=8) / np.arange(1, 9),
        babble=babble, snr_db=float(rng.uniform(*cfg.snr_db)),
        level_db=float(rng.uniform(-32, -18)),
        pitch=float(np.clip(50 + 5 * rng.standard_normal(), 35, 65)),
        rate_factor=float(np.exp(0.05 * rng.standard_normal())),
        codec=codec, packet_loss=loss if telephone else 0.0, noise_rate=float(noise_rate),
        noise_base_hz=float(extra.uniform(110, 220)) if kind == "music" else 0.0,
    )


def _noise(sess: Session, rng: np.random.Generator, n: int) -> np.ndarray:
    """A fresh stretch of the session's background noise."""
    if sess.noise_kind == "babble" and sess.babble is not None:
        start = int(rng.integers(0, max(1, len(sess.babble) - n)))
        out = np.resize(np.roll(sess.babble, -start), n)
        return out + 0.05 * rng.standard_normal(n)
    if sess.noise_kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        out = 0.1 * rng.standard_normal(n)
        for k, amp in enumerate(sess.hum_harmonics, start=1):
            out += amp * np.sin(2 * math.pi * sess.hum_hz * k * t + rng.uniform(0, 2 * math.pi))
        return out
    if sess.noise_kind in _OTHER_NOISES:
        return _OTHER_NOISES[sess.noise_kind](sess, rng, n)
    size = sp_fft.next_fast_len(n, real=True)
    spec = sp_fft.rfft(rng.standard_normal(size))
    freqs = np.maximum(sp_fft.rfftfreq(size, 1 / SAMPLE_RATE), 20.0)
    return sp_fft.irfft(spec * freqs ** (-sess.noise_slope / 2), size)[:n]


def _street(sess: Session, rng: np.random.Generator, n: int) -> np.ndarray:
    """Traffic: a low rumble (power ~ f^-2.5, rolled off above 1 kHz) that swells as
    vehicles pass (``noise_rate`` Hz)."""
    size = sp_fft.next_fast_len(n, real=True)
    freqs = np.maximum(sp_fft.rfftfreq(size, 1 / SAMPLE_RATE), 20.0)
    shape = freqs ** -1.25 / (1 + (freqs / 1000) ** 4)
    rumble = sp_fft.irfft(sp_fft.rfft(rng.standard_normal(size)) * shape, size)[:n]
    t = np.arange(n) / SAMPLE_RATE
    return rumble * (1 + 0.8 * np.sin(2 * math.pi * sess.noise_rate * t + rng.uniform(0, 2 * math.pi)))


def _music(sess: Session, rng: np.random.Generator, n: int) -> np.ndarray:
    """Background music: plucked notes of a pentatonic scale over ``noise_base_hz``,
    ``noise_rate`` notes per second, each with five decaying harmonics."""
    out = 0.01 * rng.standard_normal(n)
    step = max(1, int(SAMPLE_RATE / sess.noise_rate))
    for start in range(0, n, step):
        t = np.arange(min(2 * step, n - start)) / SAMPLE_RATE
        f = sess.noise_base_hz * 2 ** (_pick(rng, (0, 2, 4, 7, 9, 12, 14, 16)) / 12)
        tone = sum(0.6 ** h * np.sin(2 * math.pi * f * (h + 1) * t) for h in range(5))
        out[start:start + len(t)] += np.exp(-t * rng.uniform(1.5, 4.0)) * tone
    return out


def _clicks(sess: Session, rng: np.random.Generator, n: int) -> np.ndarray:
    """An office: sparse keyboard-like clicks (4–20 ms decaying bursts, ``noise_rate``
    per second) over a faint floor, high-passed at 800 Hz."""
    out = 0.03 * rng.standard_normal(n)
    for _ in range(int(rng.poisson(sess.noise_rate * n / SAMPLE_RATE))):
        at, length = int(rng.integers(n)), int(rng.uniform(0.004, 0.02) * SAMPLE_RATE)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
        out[at:at + length] += rng.uniform(0.5, 1.5) * burst[: n - at]
    return signal.sosfilt(signal.butter(2, 800, btype="highpass", fs=SAMPLE_RATE, output="sos"), out)


_OTHER_NOISES = {"street": _street, "music": _music, "clicks": _clicks}


# --------------------------------------------------------------------------- codecs

def _mulaw(x: np.ndarray) -> np.ndarray:
    """G.711 mu-law: 8 bits, logarithmic (mu = 255), relative to the peak."""
    peak = np.max(np.abs(x)) + 1e-9
    mu = np.sign(x / peak) * np.log1p(255 * np.abs(x / peak)) / math.log(256)
    mu = np.round(mu * 127) / 127
    return np.sign(mu) * np.expm1(np.abs(mu) * math.log(256)) / 255 * peak


def _alaw(x: np.ndarray) -> np.ndarray:
    """G.711 A-law: 8 bits, A = 87.6, relative to the peak."""
    a, log_a = 87.6, 1 + math.log(87.6)
    peak = np.max(np.abs(x)) + 1e-9
    y = np.abs(x) / peak
    c = np.where(y < 1 / a, a * y / log_a, (1 + np.log(np.maximum(a * y, 1.0))) / log_a)
    c = np.round(c * 127) / 127
    y = np.where(c < 1 / log_a, c * log_a / a, np.exp(c * log_a - 1) / a)
    return np.sign(x) * y * peak


def _gsm(x: np.ndarray) -> np.ndarray:
    """GSM-like (not the real RPE-LTP coder): pre-emphasis, 20 ms blocks each quantised
    to 4 bits under a block scale on a 64-step log grid, de-emphasis; coarse noise that
    follows the speech envelope."""
    e = signal.lfilter([1.0, -0.86], [1.0], x)
    n = len(e)
    blocks = np.pad(e, (0, -n % 160)).reshape(-1, 160)
    scale = np.max(np.abs(blocks), axis=1, keepdims=True) + 1e-9
    scale = 2.0 ** (np.round(np.log2(scale) * 4) / 4)  # 1.5 dB steps
    q = np.clip(np.round(blocks / scale * 7.5), -8, 7) / 7.5 * scale
    return signal.lfilter([1.0], [1.0, -0.86], q.reshape(-1)[:n])


_CODECS = {"mulaw": _mulaw, "alaw": _alaw, "gsm": _gsm}


def _lose_frames(x: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Lost 20 ms frames (at 8 kHz) concealed by repeating the previous frame at half
    level (silence after two losses in a row)."""
    x = x.copy()
    frames = len(x) // 160
    lost = np.nonzero(rng.random(frames) < fraction)[0]
    for k in lost:
        prev = x[(k - 1) * 160:k * 160] if k > 0 else np.zeros(160)
        x[k * 160:(k + 1) * 160] = 0.5 * prev
    return x


def _telephone(x: np.ndarray, sess: Session, rng: np.random.Generator, n: int) -> np.ndarray:
    """The 8 kHz telephone path: resample, the session's codec, lost frames, back to 16 kHz."""
    x = soxr.resample(x, SAMPLE_RATE, 8000)
    x = _CODECS[sess.codec](x)
    if sess.packet_loss > 0:  # no draw otherwise: the default domain's generator is untouched
        x = _lose_frames(x, sess.packet_loss, rng)
    x = soxr.resample(x, 8000, SAMPLE_RATE)[:n]
    return np.pad(x, (0, n - len(x)))


# --------------------------------------------------------------------------- utterances

def _trim_silence(x: np.ndarray, rate: int) -> np.ndarray:
    hop = rate // 100
    n = len(x) // hop
    if n == 0:
        return x
    energy = np.abs(x[: n * hop]).reshape(n, hop).max(axis=1)
    loud = np.nonzero(energy > energy.max() * 0.02)[0]
    if len(loud) == 0:
        return x
    return x[loud[0] * hop:(loud[-1] + 1) * hop]


def _voice(spk: Speaker, sess: Session, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """The dry voice of one utterance at 16 kHz: espeak-ng, vocal tract, voice quality."""
    native = espeak.native_sample_rate()
    rate = spk.rate * sess.rate_factor * math.exp(0.05 * rng.standard_normal())
    parts, total = [], 0.0
    for _ in range(4):
        n_words = max(2, int((seconds - total) * rate / 60 * 0.8) + 1)
        speech, _ = espeak.synthesize(
            make_sentence(rng, n_words), f"{spk.accent}",
            rate=int(np.clip(rate / spk.vtl_alpha, 80, 450)),
            pitch=int(np.clip(sess.pitch + 3 * rng.standard_normal(), 0, 100)),
            pitch_range=int(np.clip(spk.pitch_range + 6 * rng.standard_normal(), 0, 100)),
            variant_text=spk.variant_text, seed=int(rng.integers(1 << 30)), sample_rate=None)
        speech = _trim_silence(speech.astype(np.float64), native)
        parts.append(speech)
        total += len(speech) / native / spk.vtl_alpha
        if total >= seconds:
            break
        parts.append(np.zeros(int(rng.uniform(0.15, 0.4) * native)))
    x = np.concatenate(parts)
    if spk.vibrato_depth > 0:  # slow frequency modulation: a warped time axis
        t = np.arange(len(x)) / native
        phase = rng.uniform(0, 2 * math.pi)
        warp = t + spk.vibrato_depth / (2 * math.pi * spk.vibrato_hz) * np.sin(
            2 * math.pi * spk.vibrato_hz * t + phase)
        x = np.interp(np.clip(warp, 0, t[-1]) * native, np.arange(len(x)), x)
    # Playing at alpha times the rate scales every formant (and F0, compensated) by alpha.
    x = soxr.resample(x, native * spk.vtl_alpha, SAMPLE_RATE, quality="HQ")
    x = signal.sosfilt(_biquad("highshelf", 1500, spk.tilt_db)[None], x)
    t = np.arange(len(x)) / SAMPLE_RATE
    x *= 1 + spk.tremolo_depth * np.sin(2 * math.pi * spk.tremolo_hz * t + rng.uniform(0, 6.3))
    envelope = signal.sosfilt(signal.butter(2, 30, fs=SAMPLE_RATE, output="sos"), np.abs(x))
    aspiration = signal.sosfilt(signal.butter(2, 1800, btype="highpass", fs=SAMPLE_RATE,
                                              output="sos"), rng.standard_normal(len(x)))
    x = x + 10 ** (spk.breath_db / 20) * 3.0 * np.maximum(envelope, 0) * aspiration
    return x


def _record(dry: np.ndarray, sess: Session, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Place the voice in the session's room, add its noise and pass its channel."""
    n = int(seconds * SAMPLE_RATE)
    lead = int(rng.uniform(0.05, 0.35) * SAMPLE_RATE)
    x = np.zeros(n)
    take = dry[: max(0, n - lead)]
    if len(take) > 400:  # fade out where the voice is cut
        take = take.copy()
        take[-160:] *= np.linspace(1, 0, 160)
    x[lead:lead + len(take)] = take
    if sess.rir is not None:
        x = signal.oaconvolve(x, sess.rir)[:n]
    speech = _speech_power(x)
    noise = _noise(sess, rng, n)
    snr = sess.snr_db + rng.uniform(-2, 2)
    x = x + noise * math.sqrt(speech / (10 ** (snr / 10)) / (np.mean(noise ** 2) + 1e-12))
    if sess.telephone:  # 8 kHz codec
        x = _telephone(x, sess, rng, n)
    x = signal.sosfilt(sess.channel_sos, x)
    level = sess.level_db + rng.uniform(-2, 2)
    x *= 10 ** (level / 20) / math.sqrt(np.mean(x ** 2) + 1e-12)
    peak = np.max(np.abs(x))
    if peak > 0.98:
        x *= 0.98 / peak
    return x


def _speaker_job(job: tuple) -> list[tuple[str, str, int, int, float]]:
    """Write all utterances of one speaker; return ``(utt, path, session, utt_no, seconds)``."""
    cfg, split_dir, index, spk = job
    speaker = make_speaker(cfg.seed, index, cfg.domain)
    rows = []
    for s in range(1, cfg.sessions_per_speaker + 1):
        sess = make_session(cfg, index, s)
        for u in range(1, cfg.utts_per_session + 1):
            rng = _seq(cfg.seed, _UTTERANCE, index, s, u)
            seconds = float(rng.uniform(cfg.min_utt_seconds, cfg.max_utt_seconds))
            dry = _voice(speaker, sess, rng, seconds)
            audio = _record(dry, sess, rng, seconds)
            rel = f"wav/{spk}/sess{s}_utt{u:02d}.wav"
            path = Path(split_dir) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
            with wave.open(str(path), "wb") as fh:  # 16-bit PCM, little-endian
                fh.setnchannels(1)
                fh.setsampwidth(2)
                fh.setframerate(SAMPLE_RATE)
                fh.writeframes(pcm.tobytes())
            rows.append((f"{spk}-s{s}-u{u:02d}", rel, s, u, len(pcm) / SAMPLE_RATE))
    return rows


# --------------------------------------------------------------------------- face proxy

def make_visual(cfg: SynthConfig,
                utts: list[tuple[str, int, int, int]]) -> tuple[list[str], np.ndarray]:
    """Simulated face embeddings: identity + session pose/lighting + utterance noise.

    ``utts`` holds ``(utt, speaker index, session, utterance)``. A speaker's identity is a
    random unit vector; each session adds a pose offset in a low-dimensional subspace
    shared by all speakers (so faces seen in the same pose look alike) plus lighting
    noise; each utterance adds a little noise. Some sessions and utterances have no face.
    """
    d = cfg.visual_dim
    pose_dim = min(16, d)
    basis = np.linalg.qr(_seq(cfg.seed, _POSE).standard_normal((d, pose_dim)))[0]
    # Whole sessions go missing with probability p_sess, other utterances with p_utt.
    p_sess = cfg.visual_missing / 2
    p_utt = (cfg.visual_missing - p_sess) / (1 - p_sess) if p_sess < 1 else 0.0
    keep_ids, rows = [], []
    identity: dict[int, np.ndarray] = {}
    session: dict[tuple[int, int], tuple[np.ndarray, bool]] = {}
    for utt, index, s, u in utts:
        if index not in identity:
            v = _seq(cfg.seed, _FACE_ID, index).standard_normal(d)
            identity[index] = v / np.linalg.norm(v)
        if (index, s) not in session:
            rng = _seq(cfg.seed, _FACE_SESSION, index, s)
            offset = cfg.visual_noise * (basis @ (0.30 * rng.standard_normal(pose_dim)) + (
                0.45 / math.sqrt(d)) * rng.standard_normal(d))
            session[(index, s)] = (offset, rng.random() < p_sess)
        offset, missing = session[(index, s)]
        rng = _seq(cfg.seed, _FACE_UTT, index, s, u)
        noise = (cfg.visual_noise * 0.35 / math.sqrt(d)) * rng.standard_normal(d)
        if missing or rng.random() < p_utt:
            continue
        e = identity[index] + offset + noise
        keep_ids.append(utt)
        rows.append(e / np.linalg.norm(e))
    emb = np.stack(rows).astype(np.float32) if rows else np.zeros((0, d), np.float32)
    return keep_ids, emb


def write_visual_view(corpus_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      visual_noise: float) -> dict:
    """The face proxy of an existing corpus again, at another ``visual_noise``: writes
    ``out_dir/{train,test}/visual.npy + visual_utts.txt`` for the same utterances (same
    identities, poses and missing faces; only the noise scale differs), so a run can use
    a weaker or stronger visual view with the same audio (``pseudo.visual``)."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    record = json.loads((corpus_dir / "corpus.json").read_text())
    cfg = from_dict(SynthConfig, {**record["config"], "visual_noise": float(visual_noise)})
    summary = {}
    for split in [s for s in ("train", "test", "dev") if (corpus_dir / s / "utt2spk").is_file()]:
        rows = []
        for line in (corpus_dir / split / "utt2spk").read_text().splitlines():
            utt, spk = line.split()
            s, u = utt.rsplit("-", 2)[1:]
            domain = DOMAINS[cfg.domain]
            index = domain.speaker_offset + int(spk[len(domain.speaker_prefix):])
            rows.append((utt, index, int(s[1:]), int(u[1:])))
        ids, emb = make_visual(cfg, rows)
        write_visual(out_dir / split, ids, emb)
        summary[split] = len(ids)
    return summary


# --------------------------------------------------------------------------- trials

def make_trials(cfg: SynthConfig, utts: list[tuple[str, str, int]], split: str = "test"
                ) -> list[tuple[str, str, int]]:
    """Trials of the test (or dev) split: half same-speaker pairs from different sessions,
    half different speakers.

    ``utts`` holds ``(utt, speaker, session)``. Pairs are unordered and never repeated;
    the draw depends only on the seed (each split its own stream).
    """
    stream, n_trials = (_TRIALS, cfg.n_trials) if split == "test" else (_DEV_TRIALS, cfg.n_dev_trials)
    rng = _seq(cfg.seed, stream, *DOMAINS[cfg.domain].trial_key)
    n_target = n_trials // 2
    n_nontarget = n_trials - n_target
    spk = np.unique([u[1] for u in utts], return_inverse=True)[1]
    sess = np.array([u[2] for u in utts])
    targets = []
    for s in range(spk.max() + 1):
        members = np.nonzero(spk == s)[0]
        i, j = np.triu_indices(len(members), k=1)
        cross = sess[members[i]] != sess[members[j]]
        targets.append(np.stack([members[i][cross], members[j][cross]], axis=1))
    targets = np.concatenate(targets)
    if n_target > len(targets):
        raise ConfigError(f"trials: {n_trials} need {n_target} target trials, the {split} "
                          f"set has {len(targets)} cross-session pairs")
    pairs = [(int(a), int(b), 1) for a, b in targets[np.sort(rng.choice(len(targets), n_target,
                                                                        replace=False))]]
    counts = np.bincount(spk)
    possible = len(utts) * (len(utts) - 1) // 2 - int(np.sum(counts * (counts - 1) // 2))
    if n_nontarget > possible:
        raise ConfigError(f"trials: {n_trials} need {n_nontarget} non-target trials, the "
                          f"{split} set has {possible} pairs of different speakers")
    seen: set[tuple[int, int]] = set()
    while len(seen) < n_nontarget:  # rejection sampling of unordered pairs
        draw = rng.integers(0, len(utts), size=(2 * (n_nontarget - len(seen)) + 16, 2))
        for a, b in np.sort(draw, axis=1):
            if spk[a] != spk[b] and (a, b) not in seen:
                seen.add((int(a), int(b)))
                pairs.append((int(a), int(b), 0))
                if len(seen) == n_nontarget:
                    break
    order = rng.permutation(len(pairs))
    flip = rng.random(len(pairs)) < 0.5
    out = []
    for k in order:
        a, b, label = pairs[k]
        if flip[k]:
            a, b = b, a
        out.append((utts[a][0], utts[b][0], label))
    return out


# --------------------------------------------------------------------------- driver

def _fresh_process_context() -> multiprocessing.context.BaseContext:
    """Worker processes that have never run espeak-ng (a fork server, else spawn)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def synthesize(out_dir: str | os.PathLike, cfg: SynthConfig | None = None,
               progress: bool = True) -> dict:
    """Write the simulated corpus to ``out_dir`` (layout in the module docstring).

    Returns the summary also stored in ``out_dir/corpus.json``.
    """
    cfg = cfg if cfg is not None else SynthConfig()
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").unlink(missing_ok=True)  # present only once complete
    start = time.perf_counter()
    n_total = cfg.n_train_speakers + cfg.n_test_speakers + cfg.n_dev_speakers
    width = max(4, len(str(n_total)))
    domain = DOMAINS[cfg.domain]
    first_dev = cfg.n_train_speakers + cfg.n_test_speakers + 1  # after test: train and test stay as they were
    splits = {"train": range(1, cfg.n_train_speakers + 1),
              "test": range(cfg.n_train_speakers + 1, first_dev)}
    if cfg.n_dev_speakers:
        splits["dev"] = range(first_dev, n_total + 1)
    jobs, where = [], {}
    for split, numbers in splits.items():
        (out / split).mkdir(exist_ok=True)
        for number in numbers:
            spk = f"{domain.speaker_prefix}{number:0{width}d}"
            index = domain.speaker_offset + number  # the speaker's seed index
            jobs.append((cfg, str(out / split), index, spk))
            where[spk] = (split, index)
    workers = min(cfg.workers or os.cpu_count() or 1, len(jobs))
    results: dict[str, list] = {}
    bar = progress_bar(total=len(jobs), desc="corpus", unit="spk", show=progress, lines=10)
    # espeak-ng keeps some state from one call to the next inside the library, so every
    # speaker is synthesised by a fresh process: its files then depend on the seed only.
    with _fresh_process_context().Pool(workers, maxtasksperchild=1) as pool:
        for job, rows in zip(jobs, pool.imap(_speaker_job, jobs)):
            results[job[3]] = rows
            bar.update()
    bar.close()

    summary: dict = {"format_version": FORMAT_VERSION, "sample_rate": SAMPLE_RATE}
    for split in splits:
        spks = sorted(s for s in results if where[s][0] == split)
        utts = [(row, spk) for spk in spks for row in results[spk]]
        d = out / split
        write_lines(d / "wav.scp", [f"{r[0]} {r[1]}" for r, _ in utts])
        write_lines(d / "utt2spk", [f"{r[0]} {spk}" for r, spk in utts])
        write_lines(d / "utt2dur", [f"{r[0]} {format_seconds(r[4])}" for r, _ in utts])
        write_lines(d / "spk2utt", [" ".join([spk] + [r[0] for r in results[spk]])
                                    for spk in spks])
        ids, emb = make_visual(cfg, [(r[0], where[spk][1], r[2], r[3]) for r, spk in utts])
        write_visual(d, ids, emb)
        seconds = sum(r[4] for r, _ in utts)
        summary[split] = {"speakers": len(spks), "utterances": len(utts),
                          "hours": round(seconds / 3600, 4),
                          "visual_coverage": round(len(ids) / max(1, len(utts)), 4)}
        if split in ("test", "dev"):
            trials = make_trials(cfg, [(r[0], spk, r[2]) for r, spk in utts], split)
            write_lines(d / "trials", [f"{a} {b} {'target' if y else 'nontarget'}"
                                       for a, b, y in trials])
            summary[split]["trials"] = len(trials)
            summary[split]["target_trials"] = sum(y for _, _, y in trials)
    genders = [make_speaker(cfg.seed, domain.speaker_offset + i, cfg.domain).gender
               for i in range(1, n_total + 1)]
    summary["female_speakers"] = genders.count("f")
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["workers"] = workers
    record = {"config": to_dict(cfg), "summary": summary}
    write_text(out / "corpus.json", json.dumps(record, indent=2) + "\n")
    return summary
