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
re-exported here for users. This module also holds the functions behind
``cdino eval|verify|score|embed|export|calibrate``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cdino import __version__
from cdino.atomic import replacing, write_text
from cdino.config import to_dict
from cdino.data.audio import load_audio, resample
from cdino.data.kaldi_dir import DataDir, EnrollMap, Trials, read_enroll_map, read_trials
from cdino.errors import AudioError, ConfigError, DataError, ModelFormatError
from cdino.eval.embed import (DEFAULT_BATCH_FRAMES, DEFAULT_SHARD_SIZE, MIN_FRAMES, embed_waves,
                              extract_embeddings, load_embeddings, num_frames)
from cdino.eval.calibration import (CALIBRATION_FILE, DEFAULT_PRIOR, Calibration, fit_calibration,
                                    write_calibration)
from cdino.eval.model_folder import (CONFIG_FILE, FORMAT_VERSION, MEAN_FILE, WEIGHTS_FILE, ModelFolderConfig,  # noqa: F401
                                     read_model_config, read_model_folder, save_model_folder)
from cdino.eval.verification import ASNormConfig, average_enrolment, score_enrolled_trials, score_trials
from cdino.frontend.fbank import Fbank
from cdino.metrics import act_dcf, bayes_threshold, cllr, eer, min_cllr, min_dcf, small_trial_list_warning

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
        self.threshold = float(config.threshold)
        self.threshold_source = config.threshold_source
        self.embed_dim = int(config.embed_dim)
        self.sample_rate = int(config.fbank.sample_rate)
        self.min_samples = _min_samples(self.fbank)  # shortest wave (model rate) that gets an embedding
        self.path = path
        self.calibration = calibration

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
        """Embeddings ``(N, D)`` float32 of paths or 1-D arrays (arrays at ``sample_rate``,
        16 kHz when not given). Equal-length inputs run as one batch; results equal
        :meth:`embed` of each input."""
        rate = self.sample_rate if sample_rate is None else sample_rate
        loaded = [self._loaded(w, rate) for w in waves]
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

    def verify(self, a: Side, b: Side, sample_rate: int | None = None,
               prior: float | None = None) -> tuple[float, bool]:
        """``(score, same_speaker)``; inputs as in :meth:`score`. Same when the score reaches
        :attr:`threshold`, or, with ``prior`` (the probability of *same* before listening),
        when the calibrated LLR reaches the Bayes threshold ``-logit(prior)``."""
        s = self.score(a, b, sample_rate)
        if prior is None:
            return s, s >= self.threshold
        return s, bool(self._need_calibration().llr(s) >= bayes_threshold(prior))

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


def _export_onnx(model_dir: PathLike, onnx_path: PathLike, opset: int = 17) -> tuple[Path, float]:
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
    return _export_onnx(model_dir, onnx_path, opset)[0]


# ---------------------------------------------------------------------------
# command-line verbs


def _warn(message: str | None, where: PathLike | None = None) -> None:
    """Print ``warning: [where: ]message`` on stderr (nothing for ``None``)."""
    if message:
        print(f"warning: {f'{where}: ' if where is not None else ''}{message}", file=sys.stderr)


def _batch_frames(model: SpeakerModel, batch_seconds: float) -> int:
    return max(1, int(batch_seconds * 1000.0 / model.config.fbank.frame_shift_ms))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _trial_inputs(data_dir: PathLike, trials_path: PathLike, enroll: PathLike | None
                  ) -> tuple[DataDir, Trials, EnrollMap | None, set[str]]:
    """Data folder, trials and enrolment map, checked against each other before any embedding
    work (errors name the file and line); also the utterances to embed."""
    data = DataDir.load(data_dir)
    trials = read_trials(trials_path)
    known = set(data.utts)
    if enroll is None:
        trials.check_utts(known, data_dir)
        return data, trials, None, set(trials.enroll) | set(trials.test)
    emap = read_enroll_map(enroll)
    emap.check_trials(trials, known, data_dir)
    used = list(dict.fromkeys(trials.enroll))
    emap.check_utts(known, data_dir, used=used)
    return data, trials, emap, set(trials.test) | {u for e in used for u in emap.utts[e]}


def _score_trial_list(emb: np.ndarray, utts: list[str], trials: Trials, emap: EnrollMap | None,
                      mean: np.ndarray, asnorm: ASNormConfig | None = None,
                      cohort: np.ndarray | None = None) -> np.ndarray:
    """Scores of ``trials`` (enrolments of ``emap`` when given) as ``cdino eval`` scores them."""
    utt_index = {u: i for i, u in enumerate(utts)}
    if emap is None:
        scores = score_trials(emb, utt_index, trials, mean=mean, asnorm=asnorm, cohort=cohort)
    else:
        scores = score_enrolled_trials(emb, utt_index, trials, emap.utts, mean=mean, asnorm=asnorm,
                                       cohort=cohort)
    return np.asarray(scores, dtype=np.float64)


def calibration_metrics(scores: np.ndarray, labels: np.ndarray, calibration: Calibration | None,
                        asnorm: bool = False) -> tuple[dict, str | None]:
    """``cllr``, ``min_cllr``, ``actdcf_0.01`` and ``actdcf_0.05`` of scored trials, and a note
    when some could not be computed. ``min_cllr`` needs no calibration (it is the Cllr after
    the best monotone map of the scores); ``cllr`` and ``actdcf_*`` are those of the model's
    calibrated LLRs, ``None`` without a calibration or for AS-norm scores (the calibration
    maps plain cosine scores)."""
    out: dict = {"cllr": None, "min_cllr": float(min_cllr(scores, labels)),
                 "actdcf_0.01": None, "actdcf_0.05": None}
    if asnorm and calibration is not None:
        return out, "Cllr/actDCF not computed: the calibration maps cosine scores, not AS-norm scores"
    if calibration is None:
        return out, (f"Cllr/actDCF not computed: the model has no calibration ({CALIBRATION_FILE}; "
                     "cdino calibrate fits one)")
    llr = calibration.llr(scores)
    out["cllr"] = float(cllr(llr, labels))
    out["actdcf_0.01"] = float(act_dcf(llr, labels, 0.01))
    out["actdcf_0.05"] = float(act_dcf(llr, labels, 0.05))
    return out, None


def run_eval(model_dir: PathLike, data_dir: PathLike, trials_path: PathLike, json_out: PathLike,
             scores_out: PathLike | None = None, plots_dir: PathLike | None = None,
             asnorm_top_n: int | None = None, cohort: PathLike | None = None,
             device: str = "cpu", batch_seconds: float = DEFAULT_BATCH_FRAMES / 100,
             progress: bool = True, optimize: bool = False, label: str | None = None,
             distributed: bool = False, num_workers: int = 0,
             enroll: PathLike | None = None) -> dict:
    """``cdino eval``: embed the trial utterances whole, score by cosine after subtracting the
    model's training mean (optionally AS-norm against ``cohort``, an embeddings folder),
    print EER and minDCF (prefixed ``[label]`` when given, e.g. the recipe stage), and on a
    second line Cllr, minCllr and actDCF (:func:`calibration_metrics`); write them all (as
    fractions; ``null`` for what could not be computed) to ``json_out``. A trial list too
    small for a meaningful EER is warned about on stderr
    (:func:`cdino.metrics.small_trial_list_warning`).

    ``enroll``: an enrolment map (``enroll_id utt1 utt2 ...`` lines); the trials then name
    ``enroll_id test_utt`` and each enrolment is scored as the mean of its utterances'
    normalised embeddings (:func:`cdino.eval.verification.score_enrolled_trials`).

    ``optimize`` (off by default, so the scores equal those of the eager encoder that the
    recipe evaluates) uses the faster inference rewrite of the encoder.

    ``distributed`` (under ``torchrun``; call on every rank, each with its own ``device``):
    the ranks share the embedding work; rank 0 scores, prints and writes, and returns the
    result, the other ranks return ``{}``."""
    if asnorm_top_n is not None and cohort is None:
        raise ConfigError("AS-norm needs a cohort: an embeddings folder of unlabelled training "
                          "utterances (cdino embed)")
    data, trials, emap, needed = _trial_inputs(data_dir, trials_path, enroll)  # before any embedding
    model = load_model(model_dir, device=device, optimize=optimize)
    utts = [u for u in data.utts if u in needed]
    utts, emb = extract_embeddings(model.encoder, model.fbank, data, device=model.device, utts=utts,
                                   batch_frames=_batch_frames(model, batch_seconds),
                                   progress=progress, distributed=distributed,
                                   num_workers=num_workers, desc="embedding test utterances")
    if distributed and _rank() != 0:
        return {}
    asnorm = cohort_emb = None
    if asnorm_top_n is not None:
        asnorm = ASNormConfig(top_n=int(asnorm_top_n))
        cohort_emb = load_embeddings(cohort)[1]
        if cohort_emb.shape[1] != emb.shape[1]:
            raise DataError(f"{cohort}: cohort embeddings are {cohort_emb.shape[1]}-d, "
                            f"the model's are {emb.shape[1]}-d")
    scores = _score_trial_list(emb, utts, trials, emap, model.mean, asnorm=asnorm, cohort=cohort_emb)
    labels = np.asarray(trials.labels)
    _warn(small_trial_list_warning(labels), where=trials_path)
    cal_metrics, cal_note = calibration_metrics(scores, labels, model.calibration,
                                                asnorm=asnorm is not None)
    result = {"eer": float(eer(scores, labels)),
              "mindcf_0.01": float(min_dcf(scores, labels, 0.01)),
              "mindcf_0.05": float(min_dcf(scores, labels, 0.05)),
              **cal_metrics,
              "n_trials": int(len(scores))}
    prefix = f"[{label}] " if label else ""
    print(f"{prefix}EER {100 * result['eer']:.2f} %  "
          f"minDCF(0.01) {result['mindcf_0.01']:.3f}  "
          f"minDCF(0.05) {result['mindcf_0.05']:.3f}  ({result['n_trials']} trials)")
    if cal_note is None:
        print(f"{prefix}Cllr {result['cllr']:.3f}  minCllr {result['min_cllr']:.3f}  "
              f"actDCF(0.01) {result['actdcf_0.01']:.3f}  actDCF(0.05) {result['actdcf_0.05']:.3f}")
    else:
        print(f"{prefix}minCllr {result['min_cllr']:.3f}  ({cal_note})")
    write_text(Path(json_out), json.dumps(result, indent=2) + "\n")
    if scores_out is not None:
        lines = "".join(f"{e} {t} {s:.6f}\n" for e, t, s in zip(trials.enroll, trials.test, scores))
        write_text(Path(scores_out), lines)
    if plots_dir is not None:
        from cdino.eval.plots import plot_det, plot_score_histogram

        plots = Path(plots_dir)
        plots.mkdir(parents=True, exist_ok=True)
        name = Path(model_dir).name or "model"
        plot_det({name: (scores, labels)}, plots / "det.png")
        plot_score_histogram(scores, labels, plots / "scores.png",
                             title=f"{name}: EER {100 * result['eer']:.2f} %")
    return result


def run_verify(model_dir: PathLike, a: PathLike | Sequence[PathLike], b: PathLike,
               threshold: float | None = None, device: str = "cpu", optimize: bool = True,
               as_json: bool = False, prior: float | None = None) -> str:
    """``cdino verify``: print (once) and return ``score=<f> threshold=<f> decision=same|different``,
    followed by `` llr=<f> prior=<p>`` for a calibrated model, or with ``as_json`` a one-line
    JSON object ``{"score", "threshold", "decision", "llr", "prior", "warnings", "a", "b"}``.

    ``a`` is one enrolment file or a list of them (scored as in :meth:`SpeakerModel.score`).
    The decision: with ``threshold``, ``score >= threshold``; else, for a calibrated model,
    the Bayes decision ``llr >= -logit(prior)`` (``prior`` defaults to ``VERIFY_PRIOR``,
    0.5), printed as the equivalent cosine ``threshold``; else ``score >=`` the model's
    threshold (``llr``/``prior`` are then left out of the line, ``null`` in JSON).
    A clip too short for an embedding raises :class:`AudioError` naming it; a clip under
    ``MIN_VERIFY_SECONDS`` or mostly silence gets a ``warning:`` line on stderr."""
    if threshold is not None and prior is not None:
        raise ConfigError("give --threshold (decide on the cosine score) or --prior (decide on the "
                          "calibrated LLR), not both")
    if prior is not None and not 0.0 < prior < 1.0:
        raise ConfigError(f"--prior must lie strictly between 0 and 1, got {prior}")
    model = load_model(model_dir, device=device, optimize=optimize)
    cal = model.calibration
    if prior is not None and cal is None:
        raise ConfigError(f"{model_dir}: --prior needs a calibrated model ({CALIBRATION_FILE}); "
                          "fit one with cdino calibrate, or decide with --threshold")
    enroll = list(a) if isinstance(a, (list, tuple)) else [a]
    if not enroll:
        raise ConfigError("verify needs at least one enrolment file")
    paths = [*enroll, b]
    waves = [model.check_length(model._wave(p, None), str(p)) for p in paths]
    notes = [n for p, w in zip(paths, waves) for n in clip_warnings(w, model.sample_rate, str(p))]
    for note in notes:
        _warn(note)
    embs = [model.embed(w, model.sample_rate) for w in waves]
    score = model.score(embs[:-1] if len(embs) > 2 else embs[0], embs[-1])
    llr = used_prior = None
    if cal is not None:
        llr = float(cal.llr(score))
    if threshold is not None:
        shown, same = float(threshold), score >= float(threshold)
    elif cal is not None:
        used_prior = VERIFY_PRIOR if prior is None else float(prior)
        shown, same = cal.score_threshold(used_prior), llr >= bayes_threshold(used_prior)
    else:
        shown, same = model.threshold, score >= model.threshold
    decision = "same" if same else "different"
    if as_json:
        line = json.dumps({"score": score, "threshold": shown, "decision": decision, "llr": llr,
                           "prior": used_prior, "warnings": notes,
                           "a": [str(p) for p in enroll] if isinstance(a, (list, tuple)) else str(a),
                           "b": str(b)})
    else:
        line = f"score={score:.6f} threshold={shown:.6f} decision={decision}"
        if llr is not None:
            line += f" llr={llr:.6f}"
        if used_prior is not None:
            line += f" prior={used_prior:g}"
    print(line)
    return line


def run_calibrate(model_dir: PathLike, data_dir: PathLike, trials_path: PathLike,
                  prior: float = DEFAULT_PRIOR, enroll: PathLike | None = None, device: str = "cpu",
                  batch_seconds: float = DEFAULT_BATCH_FRAMES / 100, progress: bool = True,
                  num_workers: int = 0) -> Calibration:
    """``cdino calibrate``: (re)fit the model folder's calibration from a labelled development
    trial list (scored exactly as ``cdino eval`` scores, without AS-norm; ``enroll`` as
    there), at the effective ``prior``, and write it into the folder as ``calibration.json``
    (atomically: the old file stays until the new one is complete). Prints the fit and its
    Cllr on those trials; returns it."""
    if not 0.0 < prior < 1.0:
        raise ConfigError(f"--prior must lie strictly between 0 and 1, got {prior}")
    data, trials, emap, needed = _trial_inputs(data_dir, trials_path, enroll)
    model = load_model(model_dir, device=device)
    utts = [u for u in data.utts if u in needed]
    utts, emb = extract_embeddings(model.encoder, model.fbank, data, device=model.device, utts=utts,
                                   batch_frames=_batch_frames(model, batch_seconds),
                                   progress=progress, num_workers=num_workers,
                                   desc="embedding calibration trials")
    scores = _score_trial_list(emb, utts, trials, emap, model.mean)
    labels = np.asarray(trials.labels)
    _warn(small_trial_list_warning(labels), where=trials_path)
    if labels.min() == labels.max():
        raise DataError(f"{trials_path}: calibration needs target and non-target trials; all "
                        f"{len(labels)} are {'target' if labels[0] else 'non-target'}")
    try:
        cal = fit_calibration(scores, labels, prior=prior,
                              source=f"fitted on {len(labels)} labelled trials of {trials_path}")
    except ValueError as exc:
        raise DataError(f"{trials_path}: {exc}") from None
    path = write_calibration(Path(model_dir) / CALIBRATION_FILE, cal)
    llr = cal.llr(scores)
    print(f"wrote {path}: {cal.describe()}; on these trials Cllr {cllr(llr, labels):.3f}, "
          f"minCllr {min_cllr(scores, labels):.3f}")
    return cal


@dataclass
class Pairs:
    """Unlabelled trials for ``cdino score``: ``enroll test`` as written, with their lines."""

    enroll: list[str]
    test: list[str]
    path: Path
    lines: list[int]


def read_pairs(path: PathLike) -> Pairs:
    """Read a pairs file: one ``enroll test`` per line (blank lines skipped); anything else is
    a :class:`DataError` naming the file and line."""
    from cdino.data.kaldi_dir import read_text_lines

    path = Path(path)
    pairs = Pairs([], [], path, [])
    for lineno, line in enumerate(read_text_lines(path, "pairs"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            shown = line.strip() if len(line) <= 120 else line.strip()[:117] + "..."
            raise DataError(f"{path}:{lineno}: expected 'enroll test' (two names, no label; "
                            f"labelled trials go to cdino eval), got '{shown}'")
        pairs.enroll.append(fields[0])
        pairs.test.append(fields[1])
        pairs.lines.append(lineno)
    if not pairs.enroll:
        raise DataError(f"{path}: no pairs")
    return pairs


def run_score(model_dir: PathLike, pairs_path: PathLike, out: PathLike, data_dir: PathLike | None = None,
              threshold: float | None = None, device: str = "cpu",
              batch_seconds: float = DEFAULT_BATCH_FRAMES / 100, progress: bool = True,
              optimize: bool = True) -> dict:
    """``cdino score``: score unlabelled pairs and write ``enroll test score decision`` lines
    (decision ``same|different`` at the model's threshold, or ``threshold``) to ``out``.

    With ``data_dir`` the names are utterance ids of that data folder (an audio suffix is
    dropped, as in trials files) and are embedded whole like ``cdino eval``; without it they
    are audio file paths, relative ones resolved against the current directory. Every name
    is checked before any embedding work. Returns a summary."""
    from cdino.data.kaldi_dir import utt_id_from_path

    pairs = read_pairs(pairs_path)
    names = list(dict.fromkeys(pairs.enroll + pairs.test))
    if data_dir is not None:
        data = DataDir.load(data_dir)
        key = {n: utt_id_from_path(n) for n in names}
        known = set(data.utts)
        for e, t, lineno in zip(pairs.enroll, pairs.test, pairs.lines):
            for n in (e, t):
                if key[n] not in known:
                    raise DataError(f"{pairs.path}:{lineno}: utterance '{n}' is not in {data_dir}")
    else:
        key = {n: n for n in names}
        for e, t, lineno in zip(pairs.enroll, pairs.test, pairs.lines):
            for n in (e, t):
                if not Path(n).is_file():
                    raise DataError(f"{pairs.path}:{lineno}: audio file '{n}' not found")
    model = load_model(model_dir, device=device, optimize=optimize)
    if threshold is not None:
        model = model.with_threshold(threshold)
    if data_dir is not None:
        needed = set(key.values())
        utts, emb = extract_embeddings(model.encoder, model.fbank, data,
                                       utts=[u for u in data.utts if u in needed], device=model.device,
                                       batch_frames=_batch_frames(model, batch_seconds), progress=progress)
    else:
        utts = list(dict.fromkeys(key.values()))
        emb = np.stack([model.embed(u) for u in utts]) if utts else np.zeros((0, model.embed_dim))
    index = {u: i for i, u in enumerate(utts)}
    keyed = Pairs([key[n] for n in pairs.enroll], [key[n] for n in pairs.test], pairs.path, pairs.lines)
    scores = np.asarray(score_trials(emb, index, keyed, mean=model.mean), dtype=np.float64)
    same = scores >= model.threshold
    write_text(Path(out), "".join(f"{e} {t} {s:.6f} {'same' if d else 'different'}\n"
                                     for e, t, s, d in zip(pairs.enroll, pairs.test, scores, same)))
    summary = {"out": str(out), "n_pairs": int(len(scores)), "threshold": model.threshold,
               "n_same": int(same.sum()), "n_different": int((~same).sum())}
    print(f"wrote {summary['n_pairs']} scores to {out} (threshold {model.threshold:.6f}: "
          f"{summary['n_same']} same, {summary['n_different']} different)")
    return summary


def run_embed(model_dir: PathLike, data_dir: PathLike, out_dir: PathLike, device: str = "cpu",
              batch_seconds: float = DEFAULT_BATCH_FRAMES / 100, shard_size: int = DEFAULT_SHARD_SIZE,
              skip_bad: bool = True, rank: int = 0, world_size: int = 1,
              progress: bool = True, optimize: bool = True, distributed: bool = False,
              num_workers: int = 0) -> dict:
    """``cdino embed``: full-utterance embeddings of a data folder into ``out_dir``
    (``embeddings.npy`` + ``utts.txt``; resumable). Returns a summary.

    ``distributed`` (under ``torchrun``, on every rank): the ranks share the shards and
    rank 0 writes the merged folder; ``rank``/``world_size`` instead split by hand."""
    from cdino.data.audio import SkippedFiles

    model = load_model(model_dir, device=device, optimize=optimize)
    skipped = SkippedFiles()
    utts, emb = extract_embeddings(model.encoder, model.fbank, data_dir, out_dir=out_dir,
                                   device=model.device, batch_frames=_batch_frames(model, batch_seconds),
                                   shard_size=shard_size, rank=rank, world_size=world_size,
                                   progress=progress, skipped=skipped, skip_bad=skip_bad,
                                   distributed=distributed, num_workers=num_workers)
    summary = {"out": str(out_dir), "n_utts": len(utts), "embed_dim": model.embed_dim,
               "skipped": skipped.count}
    if distributed and _rank() != 0:
        return summary
    where = "embeddings.npy + utts.txt" if world_size == 1 or distributed else f"shards of rank {rank}"
    print(f"wrote {len(utts)} embeddings ({model.embed_dim}-d) to {out_dir} ({where}); "
          f"{skipped.summary()}")
    return summary


def run_export(model_dir: PathLike, onnx: PathLike, opset: int = 17) -> Path:
    """``cdino export``: write the ONNX encoder and print the parity check."""
    path, cos = _export_onnx(model_dir, onnx, opset)
    model_cfg = read_model_config(model_dir)
    print(f"wrote {path}: input feats (batch, frames, {model_cfg.encoder.n_mels}) fbank, output embs "
          f"(batch, {model_cfg.embed_dim}); ONNX Runtime vs PyTorch cosine {cos:.6f}")
    return path
