"""Model folders and the user API: load a trained speaker model, embed, score, verify, export.

    model = cdino.load_model("exp/model")          # device="cuda" / "auto" also work
    e = model.embed("a.wav")                       # float32 (D,), not normalised
    s = model.score("a.wav", "b.wav")              # cosine after subtracting the training mean
    s = model.score(wave_a, wave_b, sample_rate=8000)  # arrays need their rate
    score, same = model.verify("a.wav", "b.wav")   # same = score >= model.threshold
    s = model.score(["a1.wav", "a2.wav"], "b.wav")  # several enrolment recordings
    llr = model.llr("a.wav", "b.wav")              # calibrated log-likelihood ratio

The model folder itself (files, checks, writing and reading) is
:mod:`cdino.eval.model_folder`; :func:`save_model_folder` and :func:`read_model_config` are
re-exported here for users. The functions behind the command-line verbs are
:mod:`cdino.verbs`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cdino import __version__
from cdino.atomic import replacing
from cdino.config import to_dict
from cdino.data.audio import load_audio, resample
from cdino.errors import AudioError, ModelFormatError
from cdino.eval.calibration import CALIBRATION_FILE, Calibration
from cdino.eval.embed import MIN_FRAMES, embed_waves, num_frames
from cdino.eval.model_folder import (CONFIG_FILE, FORMAT_VERSION, MEAN_FILE, WEIGHTS_FILE,  # noqa: F401 (re-exported)
                                     ModelFolderConfig, read_model_config, read_model_folder,
                                     save_model_folder)
from cdino.eval.verification import average_enrolment
from cdino.frontend.fbank import Fbank

PathLike = str | os.PathLike
Audio = PathLike | np.ndarray | torch.Tensor
#: One side of a trial: a recording, or a list/tuple of recordings (an enrolment of several).
Side = Audio | Sequence[Audio]

#: The prior ``cdino verify`` decides for with a calibrated model unless ``--prior`` is given:
#: equal odds, so the Bayes threshold is ``llr >= 0`` (the fewest errors when same and
#: different speakers are equally likely).
VERIFY_PRIOR = 0.5


def load_model(path: PathLike, device: str | torch.device = "cpu",
               optimize: bool | str = False) -> "SpeakerModel":
    """Load a model folder (see ``docs/model_folder.md``); weights are read without running code.

    ``device`` is a torch device name or ``"auto"`` (CUDA when present, else CPU); ``"cuda"``
    on a machine without CUDA raises :class:`ConfigError` (see
    :func:`cdino.distributed.resolve_device`). ``optimize`` swaps in
    :func:`cdino.models.inference.optimize_for_inference` (BatchNorm folded,
    TorchScript-frozen): faster, embeddings equal up to float rounding; a string (``"fp32"``,
    ``"bf16"``, ``"auto"``) names its precision (``True``: ``"auto"``, bf16 on CPUs with
    native bf16 units).
    """
    folder = read_model_folder(path, device=device, optimize=optimize)
    return SpeakerModel(folder.encoder, folder.config, folder.mean, device=folder.device,
                        path=folder.path, calibration=folder.calibration)


# ---------------------------------------------------------------------------
# the model

#: ``cdino verify`` warns about a clip shorter than this (seconds): its embedding, and so
#: the score, is unreliable. Clips under ~0.1 s (``MIN_FRAMES`` frames) get no embedding.
MIN_VERIFY_SECONDS = 1.0
#: A 25 ms frame (10 ms hop) is *active* when its RMS level is at least this (dB re full
#: scale 1.0) and within ``ACTIVE_RANGE_DB`` of the clip's loudest frame.
ACTIVE_LEVEL_DBFS = -50.0
ACTIVE_RANGE_DB = 40.0
#: ``cdino verify`` warns that a clip is mostly silence when fewer frames are active.
MIN_ACTIVE_FRACTION = 0.5


def _min_samples(fbank: nn.Module) -> int:
    """The fewest samples giving ``MIN_FRAMES`` fbank frames (the embedding minimum)."""
    lo, hi = 1, 1
    while num_frames(fbank, hi) < MIN_FRAMES:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if num_frames(fbank, mid) >= MIN_FRAMES:
            hi = mid
        else:
            lo = mid + 1
    return lo


def active_fraction(wave: np.ndarray, sample_rate: int = 16000) -> float:
    """Share of 25 ms frames (10 ms hop) that are active (see ``ACTIVE_LEVEL_DBFS``): a
    simple energy measure of how much of a clip is not silence. 0.0 for an empty clip."""
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return 0.0
    frame = max(1, round(0.025 * sample_rate))
    hop = max(1, round(0.010 * sample_rate))
    if x.size < frame:
        x = np.pad(x, (0, frame - x.size))
    starts = np.arange(0, x.size - frame + 1, hop)
    energy = np.concatenate([[0.0], np.cumsum(x * x)])
    rms = np.sqrt(np.maximum(energy[starts + frame] - energy[starts], 0.0) / frame)
    level = 20.0 * np.log10(np.maximum(rms, 1e-10))
    floor = max(ACTIVE_LEVEL_DBFS, float(level.max()) - ACTIVE_RANGE_DB)
    return float(np.mean(level >= floor))


def clip_warnings(wave: np.ndarray, sample_rate: int, name: str) -> list[str]:
    """One-line warnings about a clip that embeds but scores unreliably: shorter than
    ``MIN_VERIFY_SECONDS``, or mostly silence (``active_fraction`` under ``MIN_ACTIVE_FRACTION``)."""
    notes = []
    seconds = np.shape(wave)[0] / float(sample_rate)
    if seconds < MIN_VERIFY_SECONDS:
        notes.append(f"{name}: only {seconds:.2f} s of audio (under {MIN_VERIFY_SECONDS:g} s); "
                     "the score is unreliable")
    active = active_fraction(wave, sample_rate)
    if active < MIN_ACTIVE_FRACTION:
        notes.append(f"{name}: mostly silence (only {100 * active:.0f} % of 25 ms frames are above "
                     f"{ACTIVE_LEVEL_DBFS:g} dBFS); the score is unreliable")
    return notes


class SpeakerModel:
    """A trained speaker-embedding extractor with its fbank front end, mean and threshold.

    Attributes: ``encoder`` (eval mode), ``fbank``, ``mean`` (float32 (D,)), ``threshold``,
    ``threshold_source``, ``embed_dim``, ``device``, ``config`` (:class:`ModelFolderConfig`),
    ``calibration`` (:class:`~cdino.eval.calibration.Calibration`, or ``None`` for a folder
    without ``calibration.json``).
    """

    def __init__(self, encoder: nn.Module, config: ModelFolderConfig, mean: np.ndarray,
                 device: str | torch.device = "cpu", path: Path | None = None,
                 calibration: Calibration | None = None) -> None:
        self.device = torch.device(device)
        self.config = config
        self.encoder = encoder.to(self.device).eval()
        self.fbank = Fbank(config.fbank).to(self.device).eval()
        self.mean = np.asarray(mean, dtype=np.float32)
        self.calibration = calibration
        self.eer_threshold = float(config.threshold)  # the folder's label-free EER threshold
        self.threshold, self.threshold_source = self.decision_threshold()
        self.embed_dim = int(config.embed_dim)
        self.sample_rate = int(config.fbank.sample_rate)
        self.min_samples = _min_samples(self.fbank)  # shortest wave (model rate) that gets an embedding
        self.path = path

    def __repr__(self) -> str:
        return (f"SpeakerModel({self.config.encoder.name}, {self.embed_dim}-d, "
                f"threshold={self.threshold:.4f}, device={self.device})")

    # -- audio in ----------------------------------------------------------

    def _wave(self, audio: Audio, sample_rate: int | None) -> np.ndarray:
        """A 1-D float32 wave at the model's rate from a path, or an array at ``sample_rate``."""
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(audio, self.sample_rate)
        if sample_rate is None:
            raise ValueError("sample_rate is required when audio is an array "
                             "(e.g. model.embed(wave, sample_rate=16000))")
        wave = audio.detach().float().cpu().numpy() if torch.is_tensor(audio) \
            else np.asarray(audio, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"audio must be a 1-D (mono) waveform, got shape {wave.shape}")
        if not np.isfinite(wave).all():
            raise ValueError("audio holds NaN or infinite samples")
        return resample(np.ascontiguousarray(wave, dtype=np.float32), int(sample_rate), self.sample_rate)

    def check_length(self, wave: np.ndarray, name: str = "audio array") -> np.ndarray:
        """``wave`` (at the model's rate) when it is long enough for an embedding (``MIN_FRAMES``
        fbank frames, about 0.1 s); else :class:`AudioError` naming ``name`` (the file)."""
        n = int(np.shape(wave)[0])
        if n < self.min_samples:
            raise AudioError(f"{name}: too short for an embedding ({1000 * n / self.sample_rate:.0f} ms; "
                             f"at least {1000 * self.min_samples / self.sample_rate:.0f} ms needed)")
        return wave

    def _loaded(self, audio: Audio, sample_rate: int | None) -> np.ndarray:
        """:meth:`_wave`, checked by :meth:`check_length` (a path is named in the error)."""
        name = str(audio) if isinstance(audio, (str, os.PathLike)) else "audio array"
        return self.check_length(self._wave(audio, sample_rate), name)

    def features(self, audio: Audio, sample_rate: int | None = None) -> torch.Tensor:
        """Fbank features ``(1, T, n_mels)`` of a file path, or of a 1-D wave at ``sample_rate``
        (the model's 16 kHz when not given)."""
        if isinstance(audio, (str, os.PathLike)) or sample_rate is not None:
            wave = self._wave(audio, sample_rate)
        else:
            wave = audio
        w = torch.as_tensor(np.asarray(wave, dtype=np.float32)) if not torch.is_tensor(wave) else wave.float()
        if w.dim() != 1:
            raise ValueError(f"wave must be 1-D, got shape {tuple(w.shape)}")
        with torch.inference_mode():
            return self.fbank(w.to(self.device)[None])

    # -- embeddings --------------------------------------------------------

    def embed(self, audio: Audio, sample_rate: int | None = None) -> np.ndarray:
        """Speaker embedding, float32 ``(D,)``, not normalised.

        ``audio`` is a file path (read and resampled to 16 kHz; ``sample_rate`` is then
        ignored) or a 1-D waveform array at ``sample_rate`` Hz (required; resampled with
        soxr when it differs from 16 kHz). Audio too short for an embedding (under about
        0.1 s) raises :class:`AudioError` naming the file.
        """
        wave = self._loaded(audio, sample_rate)
        emb = embed_waves(self.encoder, self.fbank, [wave], self.device)
        return emb[0].cpu().numpy().astype(np.float32)

    def embed_batch(self, waves: Sequence[Audio], sample_rate: int | None = None) -> np.ndarray:
        """Embeddings ``(N, D)`` float32 of paths or 1-D arrays, as :meth:`embed` takes them:
        arrays at ``sample_rate`` Hz (required when ``waves`` holds any; resampled to the
        model's rate), paths read and resampled whatever it is. Equal-length inputs run as
        one batch; results equal :meth:`embed` of each input."""
        if sample_rate is None:
            arrays = [i for i, w in enumerate(waves) if not isinstance(w, (str, os.PathLike))]
            if arrays:
                raise ValueError(f"sample_rate is required when waves holds arrays (waves[{arrays[0]}] is one; "
                                 f"e.g. model.embed_batch(waves, sample_rate={self.sample_rate}))")
        loaded = [self._loaded(w, sample_rate) for w in waves]
        if not loaded:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        emb = embed_waves(self.encoder, self.fbank, loaded, self.device)
        return emb.cpu().numpy().astype(np.float32)

    # -- scoring -----------------------------------------------------------

    def _as_embedding(self, x: Audio, sample_rate: int | None = None) -> np.ndarray:
        if isinstance(x, (str, os.PathLike)):
            return self.embed(x).astype(np.float64)
        arr = x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
        if arr.ndim == 1 and arr.shape[0] == self.embed_dim:
            return arr.astype(np.float64)  # an embedding (far too short to be audio)
        if sample_rate is None:
            raise ValueError("sample_rate is required when a waveform array is scored (e.g. "
                             "model.score(wave_a, wave_b, sample_rate=16000)); a 1-D array of length "
                             f"{self.embed_dim} is taken as an embedding")
        return self.embed(arr, sample_rate).astype(np.float64)

    def _side(self, x: Side, sample_rate: int | None) -> np.ndarray:
        """One side of a trial as a float64 vector: the mean-subtracted embedding of one
        recording, or for a list/tuple of recordings :func:`average_enrolment` of theirs."""
        if isinstance(x, (list, tuple)):
            if not x:
                raise ValueError("an enrolment list needs at least one recording")
            embs = np.stack([self._as_embedding(item, sample_rate) for item in x])
            return average_enrolment(embs, self.mean).astype(np.float64)
        return self._as_embedding(x, sample_rate) - self.mean

    def score(self, a: Side, b: Side, sample_rate: int | None = None) -> float:
        """Cosine similarity of two recordings after subtracting the training mean embedding.

        ``a`` and ``b`` are each a path, a 1-D waveform array at ``sample_rate`` Hz (required
        for arrays, as in :meth:`embed`), or an embedding (a 1-D array of length D, recognised
        by its length). Scores lie in [-1, 1] and match ``cdino eval``'s scoring.

        Either side may be a list (or tuple) of such recordings, e.g. several enrolment
        utterances of one speaker: that side is then the mean of their embeddings, each
        mean-subtracted and L2-normalised first (:func:`cdino.eval.verification.average_enrolment`),
        and the score its cosine with the other side, as ``cdino eval --enroll`` scores.
        """
        ea = self._side(a, sample_rate)
        eb = self._side(b, sample_rate)
        denom = max(float(np.linalg.norm(ea) * np.linalg.norm(eb)), 1e-12)
        return float(np.clip(np.dot(ea, eb) / denom, -1.0, 1.0))

    def _need_calibration(self) -> Calibration:
        if self.calibration is None:
            where = self.path if self.path is not None else "this model"
            raise ModelFormatError(f"{where}: no calibration ({CALIBRATION_FILE}); fit one with "
                                   "'cdino calibrate --model M --data DIR --trials T'")
        return self.calibration

    def llr(self, a: Side, b: Side, sample_rate: int | None = None) -> float:
        """Log-likelihood ratio of a trial: the model's calibration (``calibration.json``)
        applied to :meth:`score` (inputs as there). A model folder without a calibration
        raises :class:`ModelFormatError`."""
        cal = self._need_calibration()
        return float(cal.llr(self.score(a, b, sample_rate)))

    def decision_threshold(self, prior: float | None = None) -> tuple[float, str]:
        """The cosine score at and above which a trial is *same*, and how it was set — the
        one rule that ``verify``, ``score``, ``eval`` and this API share: with a calibration,
        where its LLR reaches the Bayes threshold ``-logit(prior)`` (``prior``: the
        probability of *same* before listening, default ``VERIFY_PRIOR`` = 0.5); without
        one, the folder's label-free EER threshold (``prior`` then needs a calibration)."""
        if self.calibration is not None:
            p = VERIFY_PRIOR if prior is None else float(prior)
            return (float(self.calibration.score_threshold(p)),
                    f"calibrated Bayes threshold at prior {p:g} ({self.calibration.source or 'calibration.json'})")
        if prior is not None:
            self._need_calibration()
        return self.eer_threshold, self.config.threshold_source

    def verify(self, a: Side, b: Side, sample_rate: int | None = None,
               prior: float | None = None) -> tuple[float, bool]:
        """``(score, same_speaker)``; inputs as in :meth:`score`. Same when the score reaches
        :attr:`threshold` (:meth:`decision_threshold`), or with ``prior`` the calibrated
        threshold for that prior."""
        s = self.score(a, b, sample_rate)
        threshold = self.threshold if prior is None else self.decision_threshold(prior)[0]
        return s, s >= threshold

    def with_threshold(self, threshold: float) -> "SpeakerModel":
        """A copy (sharing the encoder) that decides with another threshold."""
        t = float(threshold)
        if not math.isfinite(t):
            raise ValueError(f"threshold must be finite, got {threshold}")
        other = copy.copy(self)
        other.threshold = t
        other.threshold_source = f"set by the user ({t:g})"
        return other


# ---------------------------------------------------------------------------
# ONNX export


def onnx_metadata(model: "SpeakerModel") -> dict[str, str]:
    """What the ONNX file carries besides the graph (``metadata_props``; values are JSON), so
    it scores alone: the training mean, the threshold, the fbank and encoder settings."""
    return {"cdino.format_version": json.dumps(FORMAT_VERSION),
            "cdino.version": json.dumps(__version__),
            "cdino.mean": json.dumps([float(v) for v in model.mean]),
            "cdino.threshold": json.dumps(float(model.threshold)),
            "cdino.threshold_source": json.dumps(model.threshold_source),
            "cdino.fbank": json.dumps(to_dict(model.config.fbank)),
            "cdino.encoder": json.dumps(to_dict(model.config.encoder)),
            "cdino.embed_dim": json.dumps(int(model.embed_dim)),
            "cdino.calibration": json.dumps(None if model.calibration is None else
                                            {"a": model.calibration.a, "b": model.calibration.b,
                                             "prior": model.calibration.prior}),
            "cdino.scoring": json.dumps("cosine of embs after subtracting cdino.mean; same speaker "
                                        "when the score >= cdino.threshold; llr = a * score + b "
                                        "by cdino.calibration (when not null)")}


def _add_onnx_metadata(path: Path, model: "SpeakerModel") -> None:
    import onnx

    proto = onnx.load(str(path))
    props = onnx_metadata(model)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in kept + list(props.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx_with_parity(model_dir: PathLike, onnx_path: PathLike, opset: int = 17) -> tuple[Path, float]:
    """:func:`export_onnx`, also returning the worst ONNX Runtime vs PyTorch cosine of its check."""
    import onnxruntime as ort

    model = load_model(model_dir, device="cpu")
    onnx_path = Path(onnx_path)
    n_mels = int(model.config.encoder.n_mels)
    example = torch.randn(2, 200, n_mels)
    with replacing(onnx_path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(model.encoder, (example,), str(tmp), input_names=["feats"],
                                  output_names=["embs"], opset_version=opset, dynamo=False,
                                  dynamic_axes={"feats": {0: "batch", 1: "frames"},
                                                "embs": {0: "batch"}})
        _add_onnx_metadata(tmp, model)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        gen = torch.Generator().manual_seed(0)
        worst = 1.0
        for batch, frames in ((3, 237), (1, 150)):
            feats = torch.randn(batch, frames, n_mels, generator=gen)
            with torch.inference_mode():
                ref = model.encoder(feats).double().numpy()
            got = session.run(["embs"], {"feats": feats.numpy()})[0].astype(np.float64)
            cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
            worst = min(worst, float(cos.min()))
        if not worst >= 0.9999:
            raise ModelFormatError(f"{onnx_path}: ONNX Runtime embeddings differ from PyTorch's "
                                   f"(cosine {worst:.6f} < 0.9999); nothing written")
    return onnx_path, worst


def export_onnx(model_dir: PathLike, onnx_path: PathLike, opset: int = 17) -> Path:
    """Export the encoder to ONNX: input ``feats`` (batch, frames, 80) fbank, output ``embs``
    (batch, dim), dynamic batch and frames; ``metadata_props`` hold :func:`onnx_metadata`
    (mean, threshold, fbank settings as JSON). ONNX Runtime's output is checked against
    PyTorch's on random input; cosine below 0.9999 raises :class:`ModelFormatError`."""
    return export_onnx_with_parity(model_dir, onnx_path, opset)[0]
