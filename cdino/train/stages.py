"""Training stages as the user runs them: ``cdino train --method dino|cdino|pseudo|supervised``.

Each stage trains with the one :class:`~cdino.train.trainer.Trainer` and exports a model
folder ``EXP/model/`` (encoder, feature settings, training-set mean embedding, and a
verification threshold set *without labels*: the EER threshold of trials built from
k-means pseudo labels of training utterances).

Pseudo-label training runs R rounds of extract → cluster → train under ``EXP/round{r}/``;
a round whose model folder exists is skipped on rerun, a killed round resumes from its
last checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from cdino.atomic import replacing, save_npy, write_text
from cdino.console import progress_enabled
from cdino.data.kaldi_dir import DataDir, read_visual
from cdino.errors import ConfigError, DataError, TrainingError
from cdino.methods.base import FeatureFrontend
from cdino.methods.cluster_aware import ClusterAwareDinoMethod
from cdino.methods.dino import DinoMethod
from cdino.methods.pseudo_label import PseudoLabelMethod
from cdino.eval.embed import embed_training_store, inference_copy
from cdino.metrics import nmi, purity
from cdino.pseudo.fusion import align_visual, fuse
from cdino.pseudo.kmeans import KMeansConfig, cluster, cluster_size_stats, pca_whiten, write_utt2cluster
from cdino.train.batchnorm import target_batchnorm
from cdino.train.trainer import TrainConfig, Trainer
from cdino.distributed import barrier, init_distributed, is_main, resolve_device


TRAIN_EMBED_SECONDS = 20.0  # longest central part of a training utterance embedded for the model folder / clustering
EXPORT_SUBSET = 2000  # training utterances a model folder's mean, threshold and calibration come from, when no later stage clusters on its embeddings


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_train_embeddings(model_dir: Path, utts: list[str], emb: np.ndarray) -> None:
    """Keep the training-set embeddings made at export beside the model folder, tied to its
    weights, so the next stage's clustering reuses them instead of embedding again."""
    folder = Path(model_dir).parent
    meta = {"weights_sha256": _digest(Path(model_dir) / "encoder.safetensors"), "utts": list(utts)}
    save_npy(folder / "train_embeddings.npy", emb)
    write_text(folder / "train_embeddings.json", json.dumps(meta))  # last: it vouches for the array


def load_train_embeddings(model_dir: Path, utts: list[str]) -> np.ndarray | None:
    """The embeddings saved by :func:`save_train_embeddings` for exactly this model and ``utts``."""
    folder = Path(model_dir).parent
    path, meta_path = folder / "train_embeddings.npy", folder / "train_embeddings.json"
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta["utts"] != list(utts) or meta["weights_sha256"] != _digest(Path(model_dir) / "encoder.safetensors"):
            return None
        return np.load(path)
    except (OSError, ValueError, KeyError):
        return None


def model_complete(folder: Path) -> bool:
    return (Path(folder) / "config.yaml").is_file() and (Path(folder) / "encoder.safetensors").is_file()


def export_model(encoder, cfg: TrainConfig, store, device, out: Path, info: dict,
                 progress: bool = True, embed_all: bool = True) -> Path:
    """Write a model folder: mean embedding, a label-free threshold and a label-free score
    calibration (``calibration.json``), both from trials built from k-means pseudo labels
    of the training utterances.

    ``embed_all``: embed every training utterance and keep the embeddings beside the
    folder for the next stage's clustering (:func:`save_train_embeddings`); otherwise
    (no later stage clusters on them) a fixed random :data:`EXPORT_SUBSET` of them is
    enough for the mean, threshold and calibration.

    Call on every rank: the training set is embedded by all ranks together; rank 0 writes.
    """
    import sys

    from cdino.eval.model_folder import save_model_folder
    from cdino.eval.calibration import pseudo_label_calibration
    from cdino.eval.threshold import label_free_clusters, pseudo_label_threshold

    frontend = FeatureFrontend(cfg.fbank, None, None).to(device)
    encoder = encoder.to(device)
    rows = None
    if not embed_all and len(store) > EXPORT_SUBSET:
        rows = np.sort(np.random.default_rng(0).choice(len(store), EXPORT_SUBSET, replace=False))
    emb = embed_training_store(inference_copy(encoder, device), frontend.fbank, store, device,
                               TRAIN_EMBED_SECONDS,
                               progress=progress and is_main(), num_workers=cfg.data.num_workers,
                               desc="embedding training set for the model folder", rows=rows)
    if is_main():
        mean = emb.mean(axis=0)
        k = label_free_clusters(len(emb))
        labels = cluster(emb - mean, KMeansConfig(n_clusters=k, seed=0), device=device).labels
        threshold = pseudo_label_threshold(emb, np.asarray(labels), mean, seed=0)
        source = (f"EER threshold of trials built from k-means ({k} clusters) pseudo labels of "
                  f"{len(emb)} training utterances; no true labels used")
        try:  # the same trials (same seed); a model whose scores do not rank them gets none
            calibration = pseudo_label_calibration(emb, np.asarray(labels), mean, seed=0)
        except ValueError as exc:
            calibration = None
            print(f"warning: {out}: no score calibration stored ({exc})", file=sys.stderr)
        encoder.eval()
        folder = save_model_folder(out, encoder.cpu(), cfg.encoder, cfg.fbank, mean, threshold, source,
                                   info=info, calibration=calibration)
        if rows is None:
            save_train_embeddings(folder, store.utts, emb)
    barrier()
    return Path(out)


def untrained_model(cfg, train_dir: str | Path, out: str | Path) -> Path:
    """A model folder holding a randomly initialised encoder (seeded), exported as usual."""
    from cdino.data.stores import open_store
    from cdino.models.registry import build_encoder

    out = Path(out)
    if model_complete(out):
        return out
    torch.manual_seed(cfg.trainer.seed)
    encoder = build_encoder(cfg.encoder)
    progress = progress_enabled(cfg.trainer.progress) and is_main()
    store = open_store(DataDir.load(train_dir), cfg.data, progress=progress)
    # On every rank (under torchrun): the ranks embed the training set together.
    return export_model(encoder, cfg, store, resolve_device(cfg.trainer.device), out,
                        {"method": "untrained"}, progress=progress, embed_all=False)


def _true_labels(data: DataDir, utts: list[str]) -> np.ndarray | None:
    if not data.utt2spk:
        return None
    return data.speaker_labels(utts)[0]


def dino_init(path: str | Path) -> dict:
    """What a DINO stage with ``dino.init`` starts from: a DINO experiment folder gives its
    latest checkpoint (``{"run": ...}``: student, teacher, centre), a model folder its
    encoder weights (``{"encoder": ...}``)."""
    from cdino.eval.model_folder import read_model_folder
    from cdino.train import checkpoint as ckpt

    path = Path(path)
    if (path / "checkpoints").is_dir():
        found = ckpt.latest_checkpoint(path / "checkpoints")
        if found is None:
            raise TrainingError(f"{path}: no readable checkpoint to start from")
        return {"run": found[1]}
    return {"encoder": read_model_folder(path).encoder.state_dict()}


def train_dino(cfg: TrainConfig, data_dir: str | Path, out: str | Path, method: str = "dino",
               resume: bool = False) -> Path:
    """Stage 1: DINO or cluster-aware DINO; returns the exported model folder."""
    out = Path(out)
    data = DataDir.load(data_dir)
    init = dino_init(cfg.dino.init) if cfg.dino.init else None
    m = DinoMethod(init) if method == "dino" else ClusterAwareDinoMethod(init)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, m, data, out, resume=resume)
    history = trainer.fit()
    encoder = trainer.final_encoder()
    info = {"method": method, "steps": trainer.step, "epochs": cfg.trainer.epochs,
            "train_seconds": time.perf_counter() - t0, "history": history}
    # C-DINO's model is where the pseudo-label rounds start: they cluster on its embeddings.
    return export_model(encoder, cfg, trainer.store, trainer.device, out / "model", info,
                        progress=progress_enabled(cfg.trainer.progress), embed_all=method == "cdino")


def init_encoder_state(cfg: TrainConfig, init: str | Path) -> dict:
    """The encoder weights of the model folder ``init`` that a stage starts from. The
    configured encoder must have the folder's architecture, else a ``ConfigError`` names both."""
    from cdino.eval.model_folder import read_model_folder
    from cdino.models.registry import build_encoder, describe

    folder = read_model_folder(init)
    state = {k: v.clone() for k, v in folder.encoder.state_dict().items()}
    try:
        build_encoder(cfg.encoder).load_state_dict(state)
    except RuntimeError:
        raise ConfigError(f"{init}: the model folder's encoder ({describe(folder.config.encoder)}) is not the "
                          f"configured one ({describe(cfg.encoder)}); set encoder.* as in its config.yaml") from None
    return state


def train_supervised(cfg: TrainConfig, data_dir: str | Path, out: str | Path,
                     resume: bool = False, init: str | Path | None = None) -> Path:
    """The supervised reference: same encoder, trainer and AAM loss, true labels, no gate;
    from the encoder of the model folder ``init`` when given (else from scratch)."""
    out = Path(out)
    data = DataDir.load(data_dir)
    if not data.utt2spk:
        raise DataError(f"{data.root}: the supervised reference needs utt2spk")
    from dataclasses import replace

    pc = replace(cfg.pseudo, gate=replace(cfg.pseudo.gate, mode="off"),
                 correction=replace(cfg.pseudo.correction, enabled=False), modality="audio")
    cfg = replace(cfg, pseudo=pc)
    t0 = time.perf_counter()
    from cdino.data.stores import open_store

    init_distributed(resolve_device(cfg.trainer.device))  # before the store: rank 0 measures missing lengths
    store = open_store(data, cfg.data, progress=progress_enabled(cfg.trainer.progress) and is_main())
    labels = _true_labels(data, store.utts)
    start = init_encoder_state(cfg, init) if init is not None else None
    method = PseudoLabelMethod(labels, init_encoder=start, name="supervised")
    trainer = Trainer(cfg, method, data, out, resume=resume, store=store)
    if init is not None:
        trainer.log(f"encoder initialised from the model folder {init}")
    history = trainer.fit()
    info = {"method": "supervised", "steps": trainer.step, "train_seconds": time.perf_counter() - t0,
            "history": history, **({"init": str(init)} if init is not None else {})}
    return export_model(trainer.final_encoder(), cfg, store, trainer.device, out / "model", info,
                        progress=progress_enabled(cfg.trainer.progress), embed_all=False)


def load_visual_for(store_utts: list[str], cfg: TrainConfig, data: DataDir):
    """The second modality aligned to the training utterances, or ``None``."""
    src = Path(cfg.pseudo.visual) if cfg.pseudo.visual else data.root
    got = read_visual(src)
    if got is None:
        raise DataError(f"{src}: pseudo.modality is audio_visual but visual.npy / visual_utts.txt are missing")
    vis_utts, vis = got
    return align_visual(store_utts, vis_utts, vis)


def round_diagnostics(summary: dict) -> dict:
    """What a report shows of one round's summary (:func:`train_pseudo_rounds`): the
    clustering's NMI / purity against true labels (diagnostics only) and cluster count,
    and the per-epoch gate and correction log under ``gate``."""
    out = {}
    cl = summary.get("clustering", {})
    for k in ("nmi", "purity", "nmi_audio_only", "n_clusters"):
        if k in cl:
            out[k] = cl[k]
    epochs = summary.get("epochs") or []
    if epochs:
        out["gate"] = epochs
    return out


def train_pseudo_rounds(cfg: TrainConfig, data_dir: str | Path, init: str | Path, out: str | Path,
                        resume: bool = False, on_round=None, last_round: int | None = None,
                        criterion_data: str | Path | None = None) -> list[dict]:
    """Stage 2: R rounds of extract → cluster → AAM + DLG-LC training.

    ``on_round(r, model_dir, summary)`` is called after each round (e.g. to evaluate on
    test trials — for reporting only). ``last_round`` ends the rounds early (the rounds
    trained are those of the full run: a later call continues them). With
    ``pseudo.stop: criterion`` the rounds end when the label-free criterion finds a round
    no better than the best earlier one (:func:`round_stop_decision`); that round's summary
    then holds the decision under ``"stop"``, with the round kept. Returns one summary
    dict per round trained. The stop rule scores recordings of ``criterion_data`` (default:
    the training data; better, held-out unlabelled recordings none of the rounds trained on).
    """
    from cdino.data.stores import open_store
    from cdino.eval.model_folder import read_model_folder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = DataDir.load(data_dir)
    pc = cfg.pseudo
    device = resolve_device(cfg.trainer.device)
    init_distributed(device)
    store = open_store(data, cfg.data, progress=progress_enabled(cfg.trainer.progress) and is_main())
    true = _true_labels(data, store.utts)
    visual = has_visual = None
    if pc.modality == "audio_visual":
        visual, has_visual = load_visual_for(store.utts, cfg, data)
    joint = None
    if pc.labelled:
        if pc.modality == "audio_visual" or pc.large_margin_epochs:
            raise ConfigError("pseudo.labelled: joint training with a labelled folder is built for audio rounds "
                              "without large-margin fine-tuning (pseudo.modality: audio, large_margin_epochs: 0)")
        joint = JointLabelled(data, store, pc.labelled, cfg, out / "joint_data")
    init_state = init_encoder_state(cfg, init)
    prev_model = Path(init)
    prev_visual = None  # (visual-MLP state, refined rows) of the previous round
    summaries = []
    cache: dict = {}  # the stop rule's embeddings of each round, reused at the next decision

    def stopped(r: int, summary: dict) -> bool:
        if pc.stop != "criterion" or not 2 <= r < pc.rounds:
            return False
        summary["stop"] = round_stop_decision(out, r, criterion_data or data_dir, device, cache)
        return summary["stop"]["stop"]

    for r in range(1, min(pc.rounds, last_round or pc.rounds) + 1):
        rdir = out / f"round{r}"
        summary_path = rdir / "summary.json"
        if model_complete(rdir / "model") and summary_path.is_file():
            summaries.append(json.loads(summary_path.read_text()))
            prev_model = rdir / "model"
            prev_visual = load_refined_visual(rdir) if visual is not None and pc.refine_visual else None
            if stopped(r, summaries[-1]):
                break
            continue
        t0 = time.perf_counter()
        rdir.mkdir(parents=True, exist_ok=True)
        labels_path = rdir / "labels.npy"
        if not labels_path.is_file():
            # All ranks embed together; rank 0 clusters and saves; every rank reads the labels.
            cluster_visual = visual if prev_visual is None else prev_visual[1]
            labels, cl_info = _cluster_round(cfg, prev_model, store, device, cluster_visual, has_visual, true,
                                             seed=cfg.trainer.seed + r)
            if cl_info is not None and visual is not None:
                cl_info["visual_view"] = ("precomputed rows" if prev_visual is None
                                          else f"round {r - 1}'s visual network")
        if not labels_path.is_file() and is_main():
            save_npy(rdir / "class_centres.npy", cl_info.pop("class_centres"))
            write_utt2cluster(rdir / "utt2cluster", store.utts, labels)
            write_text(rdir / "clustering.json", json.dumps(cl_info, indent=1))
            save_npy(labels_path, labels)  # last: its presence says the clustering is done
        barrier()
        labels = np.load(labels_path)
        cl_info = json.loads((rdir / "clustering.json").read_text())
        start = init_state if (pc.restart_from_init or r == 1) else read_model_folder(prev_model).encoder.state_dict()
        init_visual = prev_visual[0] if prev_visual is not None and not pc.restart_from_init else None
        centres, trusted, train_true, train_data, train_store = np.load(rdir / "class_centres.npy"), None, true, data, store
        if joint is not None:  # the labelled folder's speakers join as classes after the clusters
            labels, centres, trusted, train_true = joint.round_labels(labels, centres, true, prev_model, cfg, device, rdir)
            train_data, train_store = joint.data, joint.store
            cl_info["labelled"] = {"folder": str(pc.labelled), "utterances": int(len(joint.rows)),
                                   "speakers": int(joint.n_speakers)}
        method = PseudoLabelMethod(labels, init_encoder=start, visual=visual, has_visual=has_visual,
                                   true_labels=train_true, round_index=r, plot_dir=rdir / "plots",
                                   name=f"round{r}", class_centres=centres,
                                   init_visual=init_visual, trusted=trusted)
        trainer = Trainer(cfg, method, train_data, rdir, resume=resume or (rdir / "checkpoints").is_dir(),
                          store=train_store)
        history = trainer.fit()
        encoder = trainer.final_encoder()
        if visual is not None and pc.refine_visual:
            prev_visual = (method.visual_state(), method.refined_visual())
            if is_main():
                save_refined_visual(rdir, *prev_visual)
        if pc.large_margin_epochs and r == pc.rounds:
            centres = method.student.aam.weight.detach().cpu().numpy()
            encoder = _large_margin(cfg, data, store, labels, encoder, rdir, visual, has_visual, true, centres)
        summary = {"round": r, "clustering": cl_info, "epochs": history,
                   "seconds": time.perf_counter() - t0}
        if joint is not None and pc.target_batchnorm:  # the batches mixed both domains' statistics
            fbank = FeatureFrontend(cfg.fbank, None, None).to(device).fbank
            summary["batchnorm"] = {"layers": target_batchnorm(encoder.to(device), fbank, store, device,
                                                               seed=cfg.trainer.seed),
                                    "recordings": str(data.root)}
        export_model(encoder, cfg, store, device, rdir / "model",
                     {"method": "pseudo", "round": r, **{k: v for k, v in summary.items() if k != "epochs"}},
                     progress=progress_enabled(cfg.trainer.progress), embed_all=r < pc.rounds)
        if is_main():
            write_text(summary_path, json.dumps(summary, indent=1))
        barrier()
        if on_round is not None:  # on every rank: evaluation shares its embedding work
            on_round(r, rdir / "model", summary)
        summaries.append(summary)
        prev_model = rdir / "model"
        if stopped(r, summary):
            break
    return summaries


LABELLED_PREFIX = "labelled-"  # utterance ids of the labelled folder in joint training


class JointLabelled:
    """Joint training: the unlabelled utterances (pseudo labels) and a labelled folder's
    (true labels) in one training store. The labelled utterances are a random subset of at
    most as many as the unlabelled ones (seeded), so a batch holds about half of each; their
    speakers are classes after the clusters, initialised at the speakers' mean embeddings
    by the round's starting model. The batches mix both folders' recordings, and so do the
    BatchNorm statistics training leaves: with ``pseudo.target_batchnorm`` (the default) the
    exported model's are re-estimated on the unlabelled folder's alone."""

    def __init__(self, data: DataDir, store, labelled: str | Path, cfg: TrainConfig, root: Path) -> None:
        from cdino.data.stores import open_store

        src = DataDir.load(labelled)
        if src.utt2spk is None:
            raise DataError(f"pseudo.labelled: {labelled}: no utt2spk (its true labels are what joins the rounds)")
        keep = list(src.utts)
        if len(keep) > len(store.utts):
            pick = np.random.default_rng(cfg.trainer.seed).choice(len(keep), len(store.utts), replace=False)
            keep = [keep[i] for i in np.sort(pick)]
        ids = {u: LABELLED_PREFIX + u for u in keep}
        clash = next((v for v in ids.values() if v in data.wav), None)
        if clash is not None:
            raise DataError(f"{data.root}: utterance id '{clash}' is also a labelled utterance's id in joint training")
        utts = list(store.utts) + [ids[u] for u in keep]
        wav = {**{u: data.wav[u] for u in store.utts}, **{ids[u]: src.wav[u] for u in keep}}
        utt2spk = None
        if data.utt2spk is not None:  # diagnostics: the labelled speakers count as speakers of their own
            utt2spk = {**{u: data.utt2spk[u] for u in store.utts},
                       **{ids[u]: LABELLED_PREFIX + src.utt2spk[u] for u in keep}}
        # Its own root (paths are absolute): what a store caches (utt2dur) stays out of both folders.
        root.mkdir(parents=True, exist_ok=True)
        durs = {**(data.utt2dur or {}), **{ids[u]: d for u, d in (src.utt2dur or {}).items() if u in ids}}
        self.data = DataDir(root=root.resolve(), utts=utts, wav=wav, utt2spk=utt2spk,
                            utt2dur={u: durs[u] for u in utts if u in durs} or None)
        self.store = open_store(self.data, cfg.data, progress=progress_enabled(cfg.trainer.progress) and is_main())
        pos = {u: i for i, u in enumerate(self.store.utts)}
        self.pseudo_rows = np.array([pos[u] for u in store.utts], dtype=np.int64)
        kept = [u for u in keep if ids[u] in pos]  # those long enough for the store
        self.rows = np.array([pos[ids[u]] for u in kept], dtype=np.int64)
        self.speakers, names = src.speaker_labels(kept)
        self.n_speakers = len(names)

    def round_labels(self, labels, centres, true, prev_model, cfg, device, rdir):
        """``(labels, class centres, trusted, true labels)`` over the joint store for one
        round: the clusters' labels and centres, then the labelled speakers' (``K + s``).
        The speakers' centres are written to ``rdir/labelled_centres.npy`` (reused on resume)."""
        path = rdir / "labelled_centres.npy"
        if not path.is_file():
            emb = _embed_store(prev_model, cfg, self.store, device, "embedding the labelled utterances", rows=self.rows)
            if is_main():
                save_npy(path, class_directions(emb, self.speakers, self.n_speakers))
            barrier()
        k = len(centres)
        n = len(self.store.utts)
        joint = np.zeros(n, dtype=np.int64)
        joint[self.pseudo_rows], joint[self.rows] = labels, k + self.speakers
        trusted = np.zeros(n, dtype=bool)
        trusted[self.rows] = True
        joint_true = None
        if true is not None:
            joint_true = np.zeros(n, dtype=np.int64)
            joint_true[self.pseudo_rows], joint_true[self.rows] = true, int(true.max()) + 1 + self.speakers
        return joint, np.concatenate([centres, np.load(path)]).astype(np.float32), trusted, joint_true


def round_stop_decision(out: Path, r: int, data_dir, device, cache: dict | None = None) -> dict:
    """``pseudo.stop: criterion`` after round ``r``: rounds 1..r scored together by the
    label-free criterion (:func:`cdino.eval.selection.score_candidates` on the training
    recordings, whose labels are never read); stop unless round ``r`` is the best. Rank 0
    decides and writes ``round{r}/stop.json``; every rank reads it (a rerun reads it too).
    ``cache`` keeps each round's embeddings between decisions."""
    path = Path(out) / f"round{r}" / "stop.json"
    if not path.is_file() and is_main():
        from cdino.eval.selection import embed_recordings, pick_candidate, score_candidates

        cache = {} if cache is None else cache

        def embed(name, model_dir, utts, waves):
            if cache.get(name, (None,))[0] != utts:
                cache[name] = (utts, embed_recordings(model_dir, waves, utts, device=str(device)))
            return cache[name][1]

        t0 = time.perf_counter()
        models = {f"round{i}": Path(out) / f"round{i}" / "model" for i in range(1, r + 1)}
        values, utts, _ = score_candidates(models, data_dir, device=str(device), embed=embed)
        criterion, best = pick_candidate(values)
        decision = {"round": r, "criterion": criterion, "values": values, "best": int(best[len("round"):]),
                    "stop": best != f"round{r}", "recordings": len(utts), "data": str(data_dir),
                    "seconds": time.perf_counter() - t0}
        write_text(path, json.dumps(decision, indent=1))
        verdict = (f"stop, keeping round {decision['best']}" if decision["stop"] else "go on")
        print(f"[round {r}] stop rule: {criterion} " + ", ".join(f"r{n[len('round'):]} {v[criterion]:.4f}"
                                                                for n, v in values.items())
              + f" (label-free, {len(utts)} recordings of {data_dir}): {verdict}", flush=True)
    barrier()
    return json.loads(path.read_text())


def save_refined_visual(rdir: Path, state: dict, rows: np.ndarray) -> None:
    """A round's visual network (``visual_mlp.safetensors``) and its embeddings of the
    training rows (``visual_refined.npy``), which the next round clusters on."""
    from safetensors.torch import save_file

    with replacing(rdir / "visual_mlp.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    save_npy(rdir / "visual_refined.npy", rows.astype(np.float32))


def load_refined_visual(rdir: Path):
    """``(state, rows)`` saved by :func:`save_refined_visual`, or ``None``."""
    from safetensors.torch import load_file

    if not ((rdir / "visual_refined.npy").is_file() and (rdir / "visual_mlp.safetensors").is_file()):
        return None
    return load_file(str(rdir / "visual_mlp.safetensors")), np.load(rdir / "visual_refined.npy")


def _embed_store(model_dir, cfg, store, device, desc: str, rows=None) -> np.ndarray:
    """A model folder's embeddings of a training store's utterances (or its ``rows``), the
    central ``pseudo.embed_seconds`` of each; on every rank (the work is split over them)."""
    from cdino.eval.model_folder import read_model_folder

    model = read_model_folder(model_dir, device=str(device), optimize="fp32" if device.type == "cpu" else False)
    frontend = FeatureFrontend(cfg.fbank, None, None).to(device)
    return embed_training_store(model.encoder, frontend.fbank, store, device, cfg.pseudo.embed_seconds,
                                progress=progress_enabled(cfg.trainer.progress) and is_main(),
                                num_workers=cfg.data.num_workers, rows=rows, desc=desc)


def clustering_input(emb: np.ndarray, visual, has_visual, pc, *, seed: int = 0, device=None):
    """``(audio, x, visual weight)``: a round's audio embeddings centred (or, with
    ``pc.kmeans.whiten``, whitened) and what k-means clusters — the audio, or with a visual
    view the fused rows. Whitening is of the audio alone, before the visual block joins it,
    so the visual weight in the fused cosine stays what fusion chose."""
    audio = pca_whiten(emb) if pc.kmeans.whiten else emb - emb.mean(0)
    if visual is None:
        return audio, audio, None
    x, weight = fuse(audio, visual, has_visual, pc.fusion, seed=seed, device=device)
    return audio, x, weight


def _cluster_round(cfg, model_dir, store, device, visual, has_visual, true, seed):
    t0 = time.perf_counter()
    emb = None
    if cfg.pseudo.embed_seconds == TRAIN_EMBED_SECONDS:
        emb = load_train_embeddings(model_dir, store.utts)
    if emb is None:  # no embeddings saved at export for this model: embed the training set
        emb = _embed_store(model_dir, cfg, store, device, "embedding for pseudo labels")
    if not is_main():
        return None, None
    raw = emb
    km = cfg.pseudo.kmeans
    emb, x, weight = clustering_input(emb, visual, has_visual, cfg.pseudo, seed=seed, device=device)
    from dataclasses import replace

    result = cluster(x, replace(km, n_clusters=min(km.n_clusters, max(2, len(x) // 2)), seed=seed,
                                whiten=False), device=device)
    labels = np.asarray(result.labels, dtype=np.int64)
    info = {"seconds": time.perf_counter() - t0, **cluster_size_stats(labels)}
    info["class_centres"] = class_directions(raw, labels, int(labels.max()) + 1)
    if weight is not None:
        info["visual_weight"] = weight
    if true is not None:  # diagnostics only
        info["nmi"] = float(nmi(true, labels))
        info["purity"] = float(purity(true, labels))
        if visual is not None:
            audio_only = cluster(emb, replace(km, n_clusters=int(result.n_clusters), seed=seed, whiten=False),
                                 device=device)
            info["nmi_audio_only"] = float(nmi(true, np.asarray(audio_only.labels)))
    return labels, info


def class_directions(emb: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, D)`` float32: each class's mean direction (the normalised mean of its
    L2-normalised embeddings), where an AAM classifier's weights start."""
    sums = np.zeros((n_classes, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12))
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def _large_margin(cfg, data, store, labels, encoder, rdir, visual, has_visual, true, centres):
    from dataclasses import replace

    pc = cfg.pseudo
    lm_cfg = replace(cfg, trainer=replace(cfg.trainer, epochs=pc.large_margin_epochs),
                     pseudo=replace(pc, margin_warmup_epochs=0.0),
                     optim=replace(cfg.optim, warmup_epochs=0.0, lr=cfg.optim.lr * 0.1))
    method = PseudoLabelMethod(labels, init_encoder=encoder.state_dict(), visual=visual,
                               has_visual=has_visual, true_labels=true, name="large_margin",
                               margin=pc.large_margin, segment_seconds=pc.large_margin_seconds,
                               plot_dir=rdir / "plots", class_centres=centres)
    lm_dir = rdir / "large_margin"
    trainer = Trainer(lm_cfg, method, data, lm_dir, resume=(lm_dir / "checkpoints").is_dir(), store=store)
    trainer.fit()
    return trainer.final_encoder()
