"""The functions behind ``cdino eval | verify | score | embed | export | calibrate | import``.

Each takes paths and plain values, checks its inputs before any long work (errors name the
file and line) and writes its outputs atomically, so scripts can call them as the command
line does. The model itself (load, embed, score, verify, ONNX export) is :mod:`cdino.api`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cdino.api import VERIFY_PRIOR, PathLike, SpeakerModel, export_onnx_with_parity, clip_warnings, load_model
from cdino.atomic import write_lines, write_text
from cdino.data.kaldi_dir import DataDir, EnrollMap, Trials, read_enroll_map, read_trials
from cdino.errors import ConfigError, DataError
from cdino.eval.calibration import CALIBRATION_FILE, DEFAULT_PRIOR, Calibration, fit_calibration, write_calibration
from cdino.eval.embed import DEFAULT_BATCH_FRAMES, DEFAULT_SHARD_SIZE, extract_embeddings, load_embeddings
from cdino.eval.verification import ASNormConfig, score_enrolled_trials, score_trials
from cdino.eval.model_folder import read_model_config, save_model_folder
from cdino.metrics import act_dcf, cllr, eer, min_cllr, min_dcf, small_trial_list_warning

#: How an imported model's ``threshold_source`` starts: no data has set its threshold yet.
UNSET_THRESHOLD = "unset"


def _warn(message: str | None, where: PathLike | None = None) -> None:
    """Print ``warning: [where: ]message`` on stderr (nothing for ``None``)."""
    if message:
        print(f"warning: {f'{where}: ' if where is not None else ''}{message}", file=sys.stderr)


def _batch_frames(model: SpeakerModel, batch_seconds: float) -> int:
    return max(1, int(batch_seconds * 1000.0 / model.config.fbank.frame_shift_ms))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _trial_inputs(data_dir: PathLike, trials_path: PathLike, enroll: PathLike | None, needs: str
                  ) -> tuple[DataDir, Trials, EnrollMap | None, set[str]]:
    """Data folder, trials and enrolment map, checked against each other before any embedding
    work (errors name the file and line); also the utterances to embed. ``needs`` names what
    the trials are for (``EER``, ``calibration``): a list of one class is an error."""
    data = DataDir.load(data_dir)
    trials = read_trials(trials_path)
    known = set(data.utts)
    emap = None
    if enroll is None:
        trials.check_utts(known, data_dir)
        needed = set(trials.enroll) | set(trials.test)
    else:
        emap = read_enroll_map(enroll)
        emap.check_trials(trials, known, data_dir)
        used = list(dict.fromkeys(trials.enroll))
        emap.check_utts(known, data_dir, used=used)
        needed = set(trials.test) | {u for e in used for u in emap.utts[e]}
    if trials.labels.min() == trials.labels.max():
        raise DataError(f"{trials_path}: {needs} needs target and non-target trials; all {len(trials.labels)} "
                        f"are {'target' if trials.labels[0] else 'non-target'}")
    return data, trials, emap, needed


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


def _decision_rates(scores: np.ndarray, labels: np.ndarray, model: SpeakerModel, asnorm: bool) -> dict:
    """The decisions ``cdino verify`` and ``cdino score`` would make on these trials — the
    model's one rule (:meth:`SpeakerModel.decision_threshold`) — as miss and false-alarm
    rates (``null`` for AS-norm scores, which the threshold does not apply to)."""
    if asnorm:
        return {"decision_threshold": None, "miss_rate": None, "false_alarm_rate": None}
    same = scores >= model.threshold
    tar = labels.astype(bool)
    return {"decision_threshold": float(model.threshold), "miss_rate": float((~same[tar]).mean()),
            "false_alarm_rate": float(same[~tar].mean())}


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
    data, trials, emap, needed = _trial_inputs(data_dir, trials_path, enroll, "EER")  # before any embedding
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
              **_decision_rates(scores, labels, model, asnorm is not None),
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
    The decision: with ``threshold``, ``score >= threshold``; else the model's one rule
    (:meth:`SpeakerModel.decision_threshold`): for a calibrated model the Bayes decision
    ``llr >= -logit(prior)`` (``prior`` defaults to ``VERIFY_PRIOR``, 0.5), printed as the
    equivalent cosine ``threshold``; else ``score >=`` the folder's label-free threshold
    (``llr``/``prior`` are then left out of the line, ``null`` in JSON).
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
        shown = float(threshold)
    else:  # the one rule of SpeakerModel.decision_threshold, shared with score, eval and the API
        if cal is not None:
            used_prior = VERIFY_PRIOR if prior is None else float(prior)
        else:
            _warn_unset_threshold(model, model_dir)
        shown = model.decision_threshold(prior)[0]
    same = score >= shown
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


def _warn_unset_threshold(model: SpeakerModel, model_dir: PathLike) -> None:
    """Warn that same/different is decided at a placeholder (an imported model's threshold)."""
    if model.threshold_source.startswith(UNSET_THRESHOLD):
        _warn(f"the threshold {model.threshold:g} is a placeholder ({model.threshold_source}); "
              "decide with --threshold, or fit a calibration with cdino calibrate", where=model_dir)


def run_calibrate(model_dir: PathLike, data_dir: PathLike, trials_path: PathLike | None = None,
                  prior: float = DEFAULT_PRIOR, enroll: PathLike | None = None, device: str = "cpu",
                  batch_seconds: float = DEFAULT_BATCH_FRAMES / 100, progress: bool = True,
                  num_workers: int = 0, clusters: int = 0, recentre: bool = False) -> Calibration:
    """``cdino calibrate``: (re)fit the model folder's calibration and write it into the folder
    as ``calibration.json`` (atomically: the old file stays until the new one is complete).

    With ``trials_path``: from that labelled development trial list (scored exactly as
    ``cdino eval`` scores, without AS-norm; ``enroll`` as there), at the effective ``prior``.
    Without: **label-free**, on the data folder's own audio (a new domain's unlabelled
    recordings) — trials built from k-means pseudo labels of its utterances (``clusters``,
    default one per 20 utterances, :func:`cdino.eval.threshold.label_free_clusters`), as
    the export calibrates on the training data. ``recentre`` first replaces the folder's mean
    embedding by that data's (label-free centring on the new domain). Either way the
    calibration records the data it was fitted on (``domain``). Prints the fit; returns it."""
    if not 0.0 < prior < 1.0:
        raise ConfigError(f"--prior must lie strictly between 0 and 1, got {prior}")
    if trials_path is None:
        return _calibrate_unlabelled(model_dir, data_dir, prior, device, batch_seconds, progress,
                                     num_workers, clusters, recentre)
    if recentre:
        raise ConfigError("--recentre is for label-free calibration (no --trials)")
    data, trials, emap, needed = _trial_inputs(data_dir, trials_path, enroll, "calibration")
    model = load_model(model_dir, device=device)
    utts = [u for u in data.utts if u in needed]
    utts, emb = extract_embeddings(model.encoder, model.fbank, data, device=model.device, utts=utts,
                                   batch_frames=_batch_frames(model, batch_seconds),
                                   progress=progress, num_workers=num_workers,
                                   desc="embedding calibration trials")
    scores = _score_trial_list(emb, utts, trials, emap, model.mean)
    labels = np.asarray(trials.labels)
    _warn(small_trial_list_warning(labels), where=trials_path)
    try:
        cal = fit_calibration(scores, labels, prior=prior,
                              source=f"fitted on {len(labels)} labelled trials of {trials_path}")
    except ValueError as exc:
        raise DataError(f"{trials_path}: {exc}") from None
    cal.domain = str(data_dir)
    path = write_calibration(Path(model_dir) / CALIBRATION_FILE, cal)
    llr = cal.llr(scores)
    print(f"wrote {path}: {cal.describe()}; on these trials Cllr {cllr(llr, labels):.3f}, "
          f"minCllr {min_cllr(scores, labels):.3f}")
    return cal


def _calibrate_unlabelled(model_dir: PathLike, data_dir: PathLike, prior: float, device: str,
                          batch_seconds: float, progress: bool, num_workers: int, clusters: int,
                          recentre: bool) -> Calibration:
    """:func:`run_calibrate` without labels: pseudo-label trials of ``data_dir``'s utterances."""
    from cdino.atomic import save_npy
    from cdino.eval.calibration import pseudo_label_calibration
    from cdino.eval.model_folder import MEAN_FILE
    from cdino.eval.threshold import label_free_clusters
    from cdino.pseudo.kmeans import KMeansConfig, cluster

    data = DataDir.load(data_dir)
    model = load_model(model_dir, device=device)
    utts, emb = extract_embeddings(model.encoder, model.fbank, data, device=model.device,
                                   batch_frames=_batch_frames(model, batch_seconds), progress=progress,
                                   num_workers=num_workers, desc="embedding for label-free calibration")
    k = clusters or label_free_clusters(len(utts))
    if len(utts) < 2 * k or k < 2:
        raise DataError(f"{data_dir}: {len(utts)} utterances are too few for label-free calibration "
                        f"with {k} clusters (need at least two per cluster)")
    mean = emb.mean(0).astype(np.float32) if recentre else model.mean
    labels = cluster(emb - emb.mean(0), KMeansConfig(n_clusters=k, seed=0)).labels
    try:
        cal = pseudo_label_calibration(emb, np.asarray(labels), mean, prior=prior)
    except ValueError as exc:
        raise DataError(f"{data_dir}: {exc}") from None
    cal.domain = str(data_dir)
    if recentre:
        save_npy(Path(model_dir) / MEAN_FILE, mean)
    path = write_calibration(Path(model_dir) / CALIBRATION_FILE, cal)
    print(f"wrote {path}: {cal.describe()}; label-free, {k} clusters of {len(utts)} utterances of {data_dir}"
          + ("; mean embedding re-estimated on them" if recentre else ""))
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
    _warn_unset_threshold(model, model_dir)
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
    write_lines(out, (f"{e} {t} {s:.6f} {'same' if d else 'different'}"
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
    path, cos = export_onnx_with_parity(model_dir, onnx, opset)
    model_cfg = read_model_config(model_dir)
    print(f"wrote {path}: input feats (batch, frames, {model_cfg.encoder.n_mels}) fbank, output embs "
          f"(batch, {model_cfg.embed_dim}); ONNX Runtime vs PyTorch cosine {cos:.6f}")
    return path


def run_import_wespeaker(source: PathLike, out: PathLike) -> Path:
    """``cdino import wespeaker``: write a WeSpeaker release folder (``avg_model.pt`` +
    ``config.yaml``) as a cdino model folder at ``out`` (see ``docs/wespeaker.md``).

    The encoder and its front end are WeSpeaker's (:mod:`cdino.models.wespeaker_import`).
    No data comes with a release, so ``mean.npy`` is zero (scores are plain cosines, as
    WeSpeaker scores) and the threshold is an unset placeholder, 0.0, until the user
    decides with ``--threshold`` or fits a calibration (``cdino calibrate``)."""
    from cdino.models.registry import describe
    from cdino.models.wespeaker_import import read_wespeaker

    imported = read_wespeaker(source)
    dim = imported.config.embed_dim
    info = {**imported.info, "mean": "zero: no data seen at import (plain cosine scoring)"}
    path = save_model_folder(out, imported.encoder, imported.config, imported.fbank,
                             np.zeros(dim, dtype=np.float32), 0.0,
                             f"{UNSET_THRESHOLD}: imported from WeSpeaker without data",
                             info=info)
    print(f"wrote {path}: WeSpeaker {imported.info['wespeaker_model']} as {describe(imported.config)}; "
          "mean.npy is zero and the threshold unset (docs/wespeaker.md)")
    return path


def run_select(candidates: Sequence[PathLike], data_dir: PathLike, criterion: str = "auto",
               json_out: PathLike | None = None, max_utts: int = 1600, device: str = "cpu") -> dict:
    """``cdino select``: score candidate model folders on a data folder's recordings with the
    label-free criteria of :mod:`cdino.eval.selection` (its labels, if any, are never read),
    print a table and the pick (lowest value of ``criterion``; ``auto``: ``cross_view`` where
    the folder has a second view, else ``cross_channel``), and write all values to ``json_out``."""
    from cdino.eval.selection import CRITERIA, pick_candidate, score_candidates

    paths = [Path(c) for c in candidates]
    if len(paths) < 2:
        raise ConfigError("select needs at least two candidate model folders")
    if criterion != "auto" and criterion not in CRITERIA:  # before any embedding work
        raise ConfigError(f"--criterion: '{criterion}' is not one of auto, {', '.join(CRITERIA)}")
    names = {}
    for p in paths:
        read_model_config(p)  # a clear error for a folder that is not a model
        name = p.parent.name if p.name == "model" else p.name
        names[name if name not in names else str(p)] = p
    values, utts, _ = score_candidates(names, data_dir, max_utts=max_utts, device=device)
    have = list(next(iter(values.values())))
    if criterion not in ("auto", *have):
        raise DataError(f"{data_dir}: criterion {criterion} needs a second view (visual.npy + visual_utts.txt)")
    criterion, pick = pick_candidate(values, criterion)
    width = max(len(n) for n in values)
    print(f"{'candidate':<{width}}  " + "  ".join(f"{c:>12}" for c in have))
    for name, row in sorted(values.items(), key=lambda kv: kv[1][criterion]):
        mark = "  <- pick" if name == pick else ""
        print(f"{name:<{width}}  " + "  ".join(f"{100 * row[c]:>11.2f}%" for c in have) + mark)
    print(f"pick by {criterion} (label-free, {len(utts)} recordings of {data_dir}): {names[pick]}")
    result = {"criterion": criterion, "pick": str(names[pick]), "recordings": len(utts),
              "candidates": {str(names[n]): row for n, row in values.items()}}
    if json_out is not None:
        write_text(Path(json_out), json.dumps(result, indent=1) + "\n")
    return result
