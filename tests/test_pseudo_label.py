"""Pseudo-label rounds with DLG-LC on the shared trainer: switches, rounds, diagnostics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cdino.api import save_model_folder
from cdino.config import load_config
from cdino.data.kaldi_dir import DataDir
from cdino.methods.pseudo_label import PseudoLabelMethod
from cdino.models.registry import build_encoder
from cdino.train import stages
from cdino.train.trainer import TrainConfig, Trainer

from conftest import write_speaker_dir

BASE = {
    "encoder": {"name": "ecapa_tdnn_small"},
    "trainer": {"epochs": 3, "global_batch": 8, "log_every": 2, "progress": False, "tensorboard": False,
                "threads": 1},
    "optim": {"name": "adamw", "lr": 0.002, "lr_scale_with_batch": False, "warmup_epochs": 0.3},
    "pseudo": {"rounds": 2, "kmeans": {"n_clusters": 4}, "min_seconds": 0.8, "max_seconds": 1.0,
               "gate": {"warmup_epochs": 1}, "correction": {"start_epoch": 1}},
}


@pytest.fixture
def init_model(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, BASE)
    enc = build_encoder(cfg.encoder)
    return save_model_folder(tmp_path / "init", enc, cfg.encoder, cfg.fbank,
                             np.zeros(enc.embed_dim, np.float32), 0.5, "test")


def _run_round(data_dir, tmp_path, over, labels=None):
    cfg = load_config(TrainConfig, BASE, overrides=over)
    data = DataDir.load(data_dir)
    true = data.speaker_labels()[0]
    noisy = true.copy() if labels is None else labels
    method = PseudoLabelMethod(noisy, true_labels=true, plot_dir=tmp_path / "plots")
    trainer = Trainer(cfg, method, data, tmp_path / "exp")
    history = trainer.fit()
    return history, method


def test_gate_off_keeps_everything(tiny_data, tmp_path):
    history, _ = _run_round(tiny_data, tmp_path, ["pseudo.gate.mode=off", "pseudo.correction.enabled=false"])
    assert all(h["reliable_fraction"] == 1.0 and h["corrected_fraction"] == 0.0 for h in history)
    assert all(h["threshold"] is None for h in history)


def test_fixed_gate_uses_the_given_threshold(tiny_data, tmp_path):
    history, _ = _run_round(tiny_data, tmp_path, ["pseudo.gate.mode=fixed", "pseudo.gate.fixed_threshold=0.01",
                                                  "pseudo.correction.enabled=false"])
    assert history[0]["threshold"] is None  # warm-up epoch is ungated
    assert history[1]["threshold"] == pytest.approx(0.01)
    assert history[1]["reliable_fraction"] < 1.0


def test_dynamic_gate_with_correction_flags_flipped_labels(tiny_data, tmp_path):
    data = DataDir.load(tiny_data)
    true = data.speaker_labels()[0]
    rng = np.random.default_rng(0)
    noisy = true.copy()
    flip = rng.random(len(noisy)) < 0.25
    noisy[flip] = (noisy[flip] + rng.integers(1, 4, flip.sum())) % 4
    history, method = _run_round(tiny_data, tmp_path, ["trainer.epochs=4"], labels=noisy)
    gated = [h for h in history if h["threshold"] is not None]
    assert gated, history
    assert all(0.0 < h["reliable_fraction"] <= 1.0 for h in gated)
    assert any(h["corrected_fraction"] > 0 for h in gated)
    # label-free spread of the corrections over classes, between 1 and the class count
    spread = [h["corrected_classes_effective"] for h in gated if h["corrected_fraction"] > 0]
    assert spread and all(1.0 <= x <= 4.0 + 1e-6 for x in spread), spread
    # distribution alignment is on by default and its running mean is checkpointed
    state = method.state_dict()
    assert "align" in state and state["align"]["mean"].shape == (4,)
    assert torch.isclose(state["align"]["mean"].sum(), torch.tensor(1.0), atol=1e-4)
    assert all("gate_recall" in h for h in gated)  # diagnostics from true labels are logged
    assert list((tmp_path / "plots").glob("*.png")), "a loss-gate plot per gated epoch"


def test_rounds_skip_finished_and_export(tiny_data, tmp_path, init_model):
    cfg = load_config(TrainConfig, BASE, overrides=["trainer.epochs=2"])
    seen = []
    summaries = stages.train_pseudo_rounds(cfg, tiny_data, init_model, tmp_path / "p",
                                           on_round=lambda r, m, s: seen.append(r))
    assert [s["round"] for s in summaries] == [1, 2] and seen == [1, 2]
    for r in (1, 2):
        assert stages.model_complete(tmp_path / "p" / f"round{r}" / "model")
        assert (tmp_path / "p" / f"round{r}" / "utt2cluster").is_file()
    assert "nmi" in summaries[0]["clustering"]  # diagnostic from utt2spk
    # rerun: both rounds are skipped (no callback, same summaries)
    seen.clear()
    again = stages.train_pseudo_rounds(cfg, tiny_data, init_model, tmp_path / "p",
                                       on_round=lambda r, m, s: seen.append(r))
    assert seen == [] and [s["round"] for s in again] == [1, 2]


def test_audio_visual_rounds(tmp_path, init_model):
    data_dir = write_speaker_dir(tmp_path / "av", 4, 6, 1.0, visual_dim=8)
    cfg = load_config(TrainConfig, BASE, overrides=["trainer.epochs=2", "pseudo.rounds=1",
                                                    "pseudo.modality=audio_visual"])
    summaries = stages.train_pseudo_rounds(cfg, data_dir, init_model, tmp_path / "mm")
    cl = summaries[0]["clustering"]
    assert "visual_weight" in cl and "nmi_audio_only" in cl
    assert "visual_threshold" in summaries[0]["epochs"][-1]


def test_visual_view_learns_across_rounds(tmp_path, init_model):
    """Round 2 clusters on round 1's visual-network embeddings and continues that network;
    with refine_visual off every round clusters on the precomputed rows."""
    from safetensors.torch import load_file

    data_dir = write_speaker_dir(tmp_path / "av", 4, 6, 1.0, visual_dim=8)
    over = ["trainer.epochs=2", "pseudo.rounds=2", "pseudo.modality=audio_visual", "pseudo.visual_hidden=16"]
    cfg = load_config(TrainConfig, BASE, overrides=over)
    summaries = stages.train_pseudo_rounds(cfg, data_dir, init_model, tmp_path / "mm")
    assert summaries[0]["clustering"]["visual_view"] == "precomputed rows"
    assert summaries[1]["clustering"]["visual_view"] == "round 1's visual network"
    r1 = tmp_path / "mm" / "round1"
    refined = np.load(r1 / "visual_refined.npy")
    assert refined.shape == (24, 16)  # the MLP's width, one row per utterance
    state = load_file(str(r1 / "visual_mlp.safetensors"))
    got = stages.load_refined_visual(r1)
    assert np.array_equal(got[1], refined) and set(got[0]) == set(state)
    # rows without a face stay empty; the others are the round-1 network's embeddings
    n_faces = len(np.load(data_dir / "visual.npy"))
    assert int((np.abs(refined).sum(1) > 0).sum()) == n_faces
    assert (tmp_path / "mm" / "round2" / "visual_refined.npy").is_file()
    off = load_config(TrainConfig, BASE, overrides=over + ["pseudo.refine_visual=false"])
    again = stages.train_pseudo_rounds(off, data_dir, init_model, tmp_path / "mm_fixed")
    assert again[1]["clustering"]["visual_view"] == "precomputed rows"
    assert not (tmp_path / "mm_fixed" / "round1" / "visual_refined.npy").exists()


def test_next_round_visual_network_starts_from_the_last():
    """The visual classifier's MLP is loaded from the previous round's state."""
    from cdino.methods.pseudo_label import VisualClassifier

    torch.manual_seed(0)
    prev = VisualClassifier(8, 16, 4, 32.0)
    m = PseudoLabelMethod(np.arange(6) % 3, visual=np.zeros((6, 8), np.float32),
                          has_visual=np.ones(6, bool), init_visual=prev.mlp.state_dict())
    assert m.init_visual is not None
    fresh = VisualClassifier(8, 16, 3, 32.0)
    fresh.mlp.load_state_dict(m.init_visual)
    for a, b in zip(fresh.mlp.parameters(), prev.mlp.parameters()):
        assert torch.equal(a, b)


def test_supervised_reference_trains_on_true_labels(tiny_data, tmp_path):
    cfg = load_config(TrainConfig, BASE, overrides=["trainer.epochs=2"])
    model = stages.train_supervised(cfg, tiny_data, tmp_path / "sup")
    assert stages.model_complete(model)
    info = json.loads(json.dumps(__import__("yaml").safe_load((model / "config.yaml").read_text())["info"]))
    assert info["method"] == "supervised"


def test_same_seed_same_pseudo_labels_and_eer(tiny_data, tmp_path, init_model):
    """Determinism on the CPU: same seed and data → same pseudo labels, weights and EER."""
    from cdino.verbs import run_eval
    from conftest import write_trials_for

    cfg = load_config(TrainConfig, BASE, overrides=["trainer.epochs=2", "pseudo.rounds=1"])
    trials = write_trials_for(tiny_data, tmp_path / "trials")
    results = []
    for run in ("a", "b"):
        stages.train_pseudo_rounds(cfg, tiny_data, init_model, tmp_path / run)
        labels = (tmp_path / run / "round1" / "utt2cluster").read_text()
        res = run_eval(tmp_path / run / "round1" / "model", tiny_data, trials, tmp_path / f"{run}.json",
                       progress=False)
        results.append((labels, res["eer"], res["mindcf_0.01"]))
    assert results[0] == results[1]


def test_dlg_lc_round_resumes_to_the_uninterrupted_model(tiny_data, tmp_path):
    """A DLG-LC round killed inside a correcting epoch and resumed ends with the same
    weights as the uninterrupted round: gate losses, fit and the alignment's running
    mean prediction are all in the checkpoint."""
    from conftest import StopAt, stop_after_step
    from cdino.train import checkpoint as ckpt

    over = ["trainer.epochs=3", "trainer.checkpoint_every=5"]
    cfg = load_config(TrainConfig, BASE, overrides=over)
    data = DataDir.load(tiny_data)
    true = data.speaker_labels()[0]
    rng = np.random.default_rng(1)
    noisy = np.where(rng.random(len(true)) < 0.3, (true + 1) % 4, true)

    full = Trainer(cfg, PseudoLabelMethod(noisy), data, tmp_path / "full")
    history = full.fit()
    assert any(h["corrected_fraction"] > 0 for h in history), history
    per_epoch = full.method.steps_per_epoch_value
    method = PseudoLabelMethod(noisy)
    killed = Trainer(cfg, method, data, tmp_path / "killed")
    stop_at = 2 * per_epoch + 1  # inside the third epoch, which corrects
    stop_after_step(method, stop_at)
    with pytest.raises(StopAt):
        killed.fit()
    assert ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints")
    resumed_method = PseudoLabelMethod(noisy)
    resumed = Trainer(cfg, resumed_method, data, tmp_path / "killed", resume=True)
    resumed.fit()
    want, got = full.method.student.state_dict(), resumed_method.student.state_dict()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert torch.equal(full.method.align.mean, resumed_method.align.mean)


def test_move_cap_bounds_the_samples_moved_per_epoch(tiny_data, tmp_path):
    data = DataDir.load(tiny_data)
    true = data.speaker_labels()[0]
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(true)) < 0.3, (true + 1) % 4, true)
    free, _ = _run_round(tiny_data, tmp_path / "free", ["trainer.epochs=4", "pseudo.correction.temperature=1.0"],
                         labels=noisy)
    capped, _ = _run_round(tiny_data, tmp_path / "capped", ["trainer.epochs=4", "pseudo.correction.temperature=1.0",
                                                            "pseudo.correction.max_moves_per_class=0.2"], labels=noisy)
    assert max(h["moved_fraction"] for h in free) > 0.2, free  # without the cap more move
    # each class (6 samples) takes at most 20 % of its size, one whole sample, per epoch
    assert all(h["moved_fraction"] <= 4 / 24 + 1e-9 for h in capped), capped
    assert any(h["moved_fraction"] > 0 for h in capped), capped


def test_stop_rule_ends_the_rounds_at_the_first_round_no_better_than_the_best(tiny_data, tmp_path, init_model,
                                                                               monkeypatch):
    """``pseudo.stop: criterion``: after rounds 2.. the rounds so far are scored together;
    the rounds go on while the newest is the best and end at the first that is not, keeping
    the best. The decision is written once; a rerun reads it instead of scoring again."""
    import cdino.eval.selection as selection

    made = {1: 0.30, 2: 0.20, 3: 0.25, 4: 0.10}  # round 3 is worse than round 2: stop there, keep 2
    asked = []

    def fake_scores(models, data_dir, device="cpu", embed=None, **kw):
        asked.append(sorted(models))
        assert all((p / "config.yaml").is_file() for p in models.values())
        return {n: {"cross_channel": made[int(n[len("round"):])]} for n in models}, ["u"] * 7, {}

    monkeypatch.setattr(selection, "score_candidates", fake_scores)
    cfg = load_config(TrainConfig, BASE, overrides=["trainer.epochs=1", "pseudo.rounds=4", "pseudo.stop=criterion"])
    summaries = stages.train_pseudo_rounds(cfg, tiny_data, init_model, tmp_path / "p")
    assert [s["round"] for s in summaries] == [1, 2, 3]
    assert asked == [["round1", "round2"], ["round1", "round2", "round3"]]
    assert "stop" not in summaries[0] and summaries[1]["stop"]["stop"] is False
    assert summaries[2]["stop"]["stop"] is True and summaries[2]["stop"]["best"] == 2
    assert not (tmp_path / "p" / "round4").exists()
    assert json.loads((tmp_path / "p" / "round3" / "stop.json").read_text())["criterion"] == "cross_channel"

    monkeypatch.setattr(selection, "score_candidates", lambda *a, **k: pytest.fail("scored again on rerun"))
    again = stages.train_pseudo_rounds(cfg, tiny_data, init_model, tmp_path / "p")
    assert [s["round"] for s in again] == [1, 2, 3] and again[2]["stop"]["best"] == 2
    # without the rule every round runs; the last round is never scored (nothing after it to save)
    made[3] = 0.15
    asked.clear()
    monkeypatch.setattr(selection, "score_candidates", fake_scores)
    cfg3 = load_config(TrainConfig, BASE, overrides=["trainer.epochs=1", "pseudo.rounds=3", "pseudo.stop=criterion"])
    got = stages.train_pseudo_rounds(cfg3, tiny_data, init_model, tmp_path / "q", last_round=2)
    assert [s["round"] for s in got] == [1, 2] and asked == [["round1", "round2"]]  # last_round ends early too
    got = stages.train_pseudo_rounds(cfg3, tiny_data, init_model, tmp_path / "q")
    assert [s["round"] for s in got] == [1, 2, 3] and "stop" not in got[2]


def test_stop_rule_scores_the_rounds_on_training_recordings(tmp_path, init_model):
    """The real criterion (no stand-in): with a second view it is cross_view, each round
    gets a value, and the decision follows them."""
    data_dir = write_speaker_dir(tmp_path / "av", 4, 6, 1.0, visual_dim=8)
    cfg = load_config(TrainConfig, BASE, overrides=["trainer.epochs=1", "pseudo.rounds=3", "pseudo.stop=criterion"])
    summaries = stages.train_pseudo_rounds(cfg, data_dir, init_model, tmp_path / "p")
    d = summaries[1]["stop"]
    assert d["criterion"] == "cross_view" and set(d["values"]) == {"round1", "round2"}
    v = {k: x["cross_view"] for k, x in d["values"].items()}
    assert d["best"] == (1 if v["round1"] < v["round2"] else 2) and d["stop"] == (d["best"] == 1)
    assert [s["round"] for s in summaries] == ([1, 2] if d["stop"] else [1, 2, 3])


def test_trusted_labels_are_never_gated_or_corrected_and_set_no_steps(tiny_data, tmp_path):
    """Joint training: samples with true labels (``trusted``) stay out of the gate's GMM,
    are always trained on and never corrected; corrections of the others stay among the
    clusters; an epoch has the steps of the pseudo-labelled samples alone."""
    data = DataDir.load(tiny_data)
    true = data.speaker_labels()[0]
    trusted = true >= 2  # speakers 2 and 3 play the labelled folder: classes 2, 3
    cfg = load_config(TrainConfig, BASE, overrides=["trainer.epochs=3", "pseudo.gate.mode=fixed",
                                                    "pseudo.gate.fixed_threshold=0.0001",
                                                    "pseudo.correction.threshold=0.01"])
    method = PseudoLabelMethod(true, true_labels=true, plot_dir=tmp_path / "plots", trusted=trusted)
    seen = []
    count = method._count

    def spy(idx, y, y_final, reliable, corrected, trusted_rows=None):
        seen.append((trusted_rows.clone(), reliable.clone(), corrected.clone(), y_final.clone()))
        count(idx, y, y_final, reliable, corrected, trusted_rows)

    method._count = spy
    trainer = Trainer(cfg, method, data, tmp_path / "exp")
    history = trainer.fit()
    assert trainer.steps_per_epoch == int((~trusted).sum()) // 8 == 1
    losses = method.gate_a.losses.cpu().numpy()
    assert np.isnan(losses[trusted]).all() and np.isfinite(losses[~trusted]).any()
    for rows, reliable, corrected, y_final in seen:
        assert rows.any() and reliable[rows].all() and not corrected[rows].any()  # always used, never corrected
        assert (y_final[~rows] < 2).all()  # corrections stay among the clusters (classes 0, 1)
    assert any(not reliable[~rows].all() for rows, reliable, _, _ in seen[1:])  # the gate did gate the others
    assert method.n_pseudo == 2
    assert all(h["reliable_fraction"] < 1.0 for h in history[1:])  # counted over pseudo labels only
    assert method.align.prior.numel() == 2  # distribution alignment over the clusters only


def test_joint_rounds_add_the_labelled_speakers_as_classes(tiny_data, tmp_path, init_model):
    labelled = write_speaker_dir(tmp_path / "labelled", n_speakers=3, utts_per_speaker=5, seconds=1.5, seed=7)
    cfg = load_config(TrainConfig, BASE, overrides=["trainer.epochs=2", "pseudo.rounds=2",
                                                    f"pseudo.labelled={labelled}"])
    before = {f.name: f.read_bytes() for d in (tiny_data, labelled) for f in d.iterdir() if f.is_file()}
    summaries = stages.train_pseudo_rounds(cfg, tiny_data, init_model, tmp_path / "p")
    after = {f.name: f.read_bytes() for d in (tiny_data, labelled) for f in d.iterdir() if f.is_file()}
    assert set(after) - set(before) <= {"utt2dur"}  # both folders as given (a store may cache lengths) ...
    assert all(after[k] == v for k, v in before.items())
    for d in (tiny_data, labelled):  # ... and a cache holds its own folder's utterances only
        if (d / "utt2dur").is_file():
            assert DataDir.load(d).utts == [l.split()[0] for l in (d / "wav.scp").read_text().splitlines()]
    for r, s in enumerate(summaries, 1):
        assert s["clustering"]["labelled"] == {"folder": str(labelled), "utterances": 15, "speakers": 3}
        centres = np.load(tmp_path / "p" / f"round{r}" / "labelled_centres.npy")
        assert centres.shape[0] == 3 and np.allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
        assert "purity" in s["clustering"]  # diagnostics of the clusters (the unlabelled utterances only)
    # the model folder describes the unlabelled domain: its mean is of those utterances alone
    from cdino.eval.model_folder import read_model_folder

    model = read_model_folder(tmp_path / "p" / "round2" / "model")
    assert model.mean.shape[0] == centres.shape[1]
    # ... and so are its BatchNorm statistics: re-estimated on the unlabelled recordings alone
    # (training left statistics of batches mixing both folders)
    import copy

    from cdino.data.stores import open_store
    from cdino.train.batchnorm import target_batchnorm

    assert summaries[-1]["batchnorm"] == {"layers": target_batchnorm(copy.deepcopy(model.encoder), model.fbank,
                                                                     open_store(DataDir.load(tiny_data), cfg.data),
                                                                     "cpu", seed=cfg.trainer.seed),
                                          "recordings": str(DataDir.load(tiny_data).root)}
    again = copy.deepcopy(model.encoder)
    target_batchnorm(again, model.fbank, open_store(DataDir.load(tiny_data), cfg.data), "cpu", seed=cfg.trainer.seed)
    stats = {k: v for k, v in model.encoder.state_dict().items() if "running_" in k}
    assert stats and all(torch.allclose(v, again.state_dict()[k], rtol=1e-4, atol=1e-6) for k, v in stats.items())
    mixed = copy.deepcopy(model.encoder)  # the labelled folder's recordings give other statistics
    target_batchnorm(mixed, model.fbank, open_store(DataDir.load(labelled), cfg.data), "cpu", seed=cfg.trainer.seed)
    assert not all(torch.allclose(v, mixed.state_dict()[k], rtol=1e-4, atol=1e-6) for k, v in stats.items())
    # a "labelled" folder without speakers is a one-line error naming it
    from cdino.errors import DataError

    (tmp_path / "nolabels").mkdir()
    (tmp_path / "nolabels" / "wav.scp").write_text((labelled / "wav.scp").read_text().replace("wav/", f"{labelled}/wav/"))
    bad = load_config(TrainConfig, BASE, overrides=[f"pseudo.labelled={tmp_path / 'nolabels'}", "pseudo.rounds=1"])
    with pytest.raises(DataError, match=r"pseudo.labelled: .*nolabels: no utt2spk"):
        stages.train_pseudo_rounds(bad, tiny_data, init_model, tmp_path / "q")


@pytest.mark.parametrize("whiten", [False, True])
def test_round_clustering_input_whitens_audio_before_fusion(whiten):
    from cdino.methods.pseudo_label import PseudoLabelConfig
    from cdino.pseudo.kmeans import KMeansConfig, pca_whiten

    rng = np.random.default_rng(0)
    emb = (rng.standard_normal((120, 16)) @ rng.standard_normal((16, 16)) + 2).astype(np.float32)
    visual = rng.standard_normal((120, 8)).astype(np.float32)
    has = rng.random(120) < 0.7
    pc = PseudoLabelConfig(kmeans=KMeansConfig(n_clusters=10, whiten=whiten))
    pc.fusion.visual_weight = 0.5
    audio, x, weight = stages.clustering_input(emb, visual, has, pc)
    expect = pca_whiten(emb) if whiten else emb - emb.mean(0)
    np.testing.assert_allclose(audio, expect, rtol=1e-4, atol=1e-5)
    unit = expect / np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(x[:, :16], unit, rtol=1e-4, atol=1e-5)  # the audio block
    v = visual[has] / np.linalg.norm(visual[has], axis=1, keepdims=True)
    np.testing.assert_allclose(x[has, 16:], np.sqrt(0.5) * v, rtol=1e-4, atol=1e-5)
    assert weight == 0.5
    audio_only, x_only, w_only = stages.clustering_input(emb, None, None, pc)
    np.testing.assert_allclose(x_only, expect, rtol=1e-4, atol=1e-5)
    assert w_only is None
