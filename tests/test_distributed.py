"""The same run on 1 process and on 2 gloo ranks under torchrun (CPU): results do not depend
on the number of ranks, every rank gates with one threshold, and a killed rank resumes.

Tolerances. On a CPU, gloo has no SyncBatchNorm, so these runs fix ``trainer.micro_batch``
(the same micro-batches on 1 and 2 ranks, gradient accumulation on one); BatchNorm running
statistics, the label-correction alignment and its move cap are combined over the ranks
as one process has them (cdino.train.running_stats, cap_moves_in_order). What still
differs is the order of floating-point sums (DDP averages the ranks' gradients where one
process accumulates them), a relative 1e-7 per step. Clustering the *same* model's
embeddings is then identical (round 1 labels equal bit for bit), and trained models agree
to well under the tolerances below: thresholds to 2 % relative, EERs to 10 points on a
60-trial list of about 15 target trials (one target trial moves the EER by about 3
points). The runs train in exact fp32 (the CPU bf16 autocast would add its own rounding to
what is compared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cdino.api import save_model_folder
from cdino.verbs import run_eval
from cdino.config import load_config
from cdino.models.registry import build_encoder
from cdino.testing.faults import same_encoder_weights
from cdino.train.trainer import TrainConfig

from conftest import write_speaker_dir, write_trials_for

PSEUDO_CFG = """\
encoder: {name: ecapa_tdnn_small}
trainer: {epochs: 3, global_batch: 8, micro_batch: 4, precision: fp32, log_every: 2, progress: false, tensorboard: false, threads: 1}
optim: {name: adamw, lr: 0.002, lr_scale_with_batch: false, warmup_epochs: 0.3}
pseudo: {rounds: 2, kmeans: {n_clusters: 4}, min_seconds: 0.8, max_seconds: 1.0,
         gate: {warmup_epochs: 1}, correction: {start_epoch: 1}}
"""

DINO_CFG = """\
encoder: {name: ecapa_tdnn_small}
trainer: {epochs: 4, global_batch: 8, micro_batch: 4, precision: fp32, progress: false, tensorboard: false, threads: 1, checkpoint_every: 1}
optim: {name: adamw, lr: 0.001, lr_scale_with_batch: false, warmup_epochs: 0.3}
dino: {out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_seconds: 0.6, local_seconds: 0.3, n_local: 2}
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CDINO_FAULT", "CDINO_FAULT_ONCE")}
    return {**env, "OMP_NUM_THREADS": "1", "CDINO_NO_PROGRESS": "1", **extra}


def cdino_cmd(args: list[str], ranks: int, max_restarts: int = 0) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "cdino.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
            "--max-restarts", str(max_restarts), "-m", "cdino.cli", *args]


def run_cdino(args: list[str], ranks: int, timeout: float = 600, check: bool = True, **env):
    proc = subprocess.run(cdino_cmd(args, ranks, env.pop("max_restarts", 0)), env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} on {ranks} rank(s) failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def speakers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    data = write_speaker_dir(root / "train", n_speakers=4, utts_per_speaker=6, seconds=1.5, visual_dim=8)
    write_trials_for(data, root / "trials", n=60)
    return data


@pytest.fixture(scope="module")
def init_model(speakers) -> Path:
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, {"encoder": {"name": "ecapa_tdnn_small"}})
    enc = build_encoder(cfg.encoder)
    return save_model_folder(speakers.parent / "init", enc, cfg.encoder, cfg.fbank,
                             np.zeros(enc.embed_dim, np.float32), 0.5, "test")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def test_audio_visual_rounds_agree_on_1_and_2_ranks(speakers, init_model, tmp_path):
    """Two audio-visual DLG-LC rounds (audio and visual gates, corrections, the visual
    network refined between rounds) from one model, on 1 process and on 2 ranks.

    What one process and 2 ranks compute identically is compared exactly: round 1's
    clustering (labels, fusion weight), the first gate (fitted on the ungated first epoch,
    which differs by float sums only), every rank gating with one threshold, how often each
    BatchNorm layer updated its statistics. Once gates and corrections decide sample by
    sample, a difference of one sample grows, so later figures get bounds: the visual
    network's running variance (which once was 3x apart: 2 ranks kept rank 0's statistics,
    half the updates) and the refined face rows round 2 clusters on."""
    from safetensors.numpy import load_file

    cfg = tmp_path / "mm.yaml"
    cfg.write_text(PSEUDO_CFG.replace("pseudo: {rounds: 2,", "pseudo: {rounds: 2, modality: audio_visual,"))
    outs = {}
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}"
        run_cdino(["train", "--method", "pseudo", "--data", str(speakers), "--init", str(init_model),
                   "--out", str(out), "--config", str(cfg)], ranks)
        outs[ranks] = out
    # Round 1 clusters the same model's embeddings and the same face rows: identical labels.
    np.testing.assert_array_equal(np.load(outs[1] / "round1" / "labels.npy"),
                                  np.load(outs[2] / "round1" / "labels.npy"))
    fused = [json.loads((outs[k] / "round1" / "clustering.json").read_text())["visual_weight"] for k in (1, 2)]
    assert fused[0] == fused[1]
    for r in (1, 2):
        one = json.loads((outs[1] / f"round{r}" / "summary.json").read_text())["epochs"]
        two = json.loads((outs[2] / f"round{r}" / "summary.json").read_text())["epochs"]
        assert len(one) == len(two) == 3
        assert one[0]["threshold"] is two[0]["threshold"] is None  # the warm-up epoch is ungated
        for e1, e2 in zip(one[1:], two[1:]):
            # Every rank gated with the same threshold (checked on the ranks, recorded here).
            assert e2["rank_thresholds"] == [e2["threshold"]] * 2 and "rank_thresholds" not in e1
            assert e1["threshold"] is not None and e2["visual_threshold"] is not None
        if r == 1:  # fitted on the first epoch's losses: the same up to float sums
            assert two[1]["threshold"] == pytest.approx(one[1]["threshold"], rel=0.02)
            assert two[1]["visual_threshold"] == pytest.approx(one[1]["visual_threshold"], rel=0.02)
    vis = [load_file(str(outs[k] / "round1" / "visual_mlp.safetensors")) for k in (1, 2)]
    enc = [load_file(str(outs[k] / "round1" / "model" / "encoder.safetensors")) for k in (1, 2)]
    for a, b in ((vis[0], vis[1]), (enc[0], enc[1])):
        counts = [k for k in a if k.endswith("num_batches_tracked")]
        assert counts and all(int(a[k]) == int(b[k]) > 0 for k in counts)
    assert _rel(vis[0]["1.running_var"], vis[1]["1.running_var"]) < 0.05
    assert _rel(*[np.load(outs[k] / "round1" / "visual_refined.npy") for k in (1, 2)]) < 0.1
    eers = {}
    for ranks, out in outs.items():
        res = run_eval(out / "round2" / "model", speakers, speakers.parent / "trials",
                       tmp_path / f"eval{ranks}.json", progress=False)
        eers[ranks] = res["eer"]
    assert abs(eers[1] - eers[2]) <= 0.10, eers


def test_joint_round_with_a_labelled_folder_agrees_on_1_and_2_ranks(speakers, init_model, tmp_path):
    """A joint round (``pseudo.labelled``: a labelled folder's speakers as classes beside
    the clusters) on 1 process and on 2 ranks: the same clusters and labelled centres, and
    on both the exported BatchNorm statistics are the unlabelled recordings' alone,
    re-estimated after training (60 batches, cumulative), not those the mixed batches left."""
    import copy

    from safetensors.numpy import load_file

    from cdino.data.kaldi_dir import DataDir
    from cdino.data.stores import open_store
    from cdino.eval.model_folder import read_model_folder
    from cdino.train.batchnorm import target_batchnorm

    labelled = write_speaker_dir(tmp_path / "labelled", n_speakers=3, utts_per_speaker=4, seconds=1.5, seed=7)
    cfg = tmp_path / "joint.yaml"
    cfg.write_text(PSEUDO_CFG.replace("pseudo: {rounds: 2,", f"pseudo: {{rounds: 1, labelled: {labelled},")
                   .replace("trainer: {epochs: 3,", "trainer: {epochs: 1,"))  # what is checked needs no gated epoch
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = tmp_path / f"r{ranks}"
        run_cdino(["train", "--method", "pseudo", "--data", str(speakers), "--init", str(init_model),
                   "--out", str(outs[ranks]), "--config", str(cfg)], ranks)
    np.testing.assert_array_equal(*[np.load(outs[k] / "round1" / "labels.npy") for k in (1, 2)])
    assert _rel(*[np.load(outs[k] / "round1" / "labelled_centres.npy") for k in (1, 2)]) < 1e-4
    train_cfg = load_config(TrainConfig, cfg)
    for ranks, out in outs.items():
        summary = json.loads((out / "round1" / "summary.json").read_text())
        assert summary["clustering"]["labelled"]["speakers"] == 3
        assert summary["batchnorm"]["layers"] > 0
        weights = load_file(str(out / "round1" / "model" / "encoder.safetensors"))
        counts = [k for k in weights if k.endswith("num_batches_tracked")]
        assert counts and all(int(weights[k]) == 60 for k in counts)  # re-estimated: 60 batches
        model = read_model_folder(out / "round1" / "model")
        again = copy.deepcopy(model.encoder)
        target_batchnorm(again, model.fbank, open_store(DataDir.load(speakers), train_cfg.data), "cpu",
                         seed=train_cfg.trainer.seed)
        stats = {k: v for k, v in model.encoder.state_dict().items() if "running_" in k}
        assert all(torch.allclose(v, again.state_dict()[k], rtol=1e-4, atol=1e-6) for k, v in stats.items()), ranks


def test_killed_rank_resumes_to_the_uninterrupted_two_rank_model(speakers, tmp_path):
    cfg = tmp_path / "dino.yaml"
    cfg.write_text(DINO_CFG)
    args = lambda out: ["train", "--method", "dino", "--data", str(speakers), "--out", str(out),
                        "--config", str(cfg), "--resume"]
    run_cdino(args(tmp_path / "ref"), 2)
    # 24 utterances / batch 8 = 3 steps an epoch, 12 in all: kill rank 1 at a random step.
    step = int(np.random.default_rng().integers(2, 11))
    killed = run_cdino(args(tmp_path / "killed"), 2, check=False, CDINO_FAULT=f"step:{step}@1")

    def story(folder: Path, proc) -> str:  # what a failure needs to be understood (it was rare)
        log = folder / "train.log"
        return (f"kill at step {step}; the killed run's output:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n"
                f"train.log:\n{log.read_text()[-3000:] if log.is_file() else '(none)'}")

    assert killed.returncode != 0, "the job should have died with its rank\n" + story(tmp_path / "killed", killed)
    assert not (tmp_path / "killed" / "model").exists(), story(tmp_path / "killed", killed)
    run_cdino(args(tmp_path / "killed"), 2)  # a plain rerun with --resume
    assert same_encoder_weights(tmp_path / "ref" / "model", tmp_path / "killed" / "model"), \
        story(tmp_path / "killed", killed)
    # Rank 0 killed half-way through writing a checkpoint: the rerun resumes from the last
    # complete one.
    killed = run_cdino(args(tmp_path / "mid_write"), 2, check=False, CDINO_FAULT="checkpoint_write:5@0")
    assert killed.returncode != 0, story(tmp_path / "mid_write", killed)
    run_cdino(args(tmp_path / "mid_write"), 2)
    assert same_encoder_weights(tmp_path / "ref" / "model", tmp_path / "mid_write" / "model"), \
        story(tmp_path / "mid_write", killed)


def test_fault_once_fires_once_across_restarts(tmp_path):
    """CDINO_FAULT_ONCE (for `torchrun --max-restarts`): a restarted process runs on."""
    code = "from cdino.testing.faults import fault_point; fault_point('step'); print('survived')"
    env = _env(CDINO_FAULT="step:1", CDINO_FAULT_ONCE=str(tmp_path / "fired"))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert first.returncode == -9 and "survived" not in first.stdout
    assert second.returncode == 0 and "survived" in second.stdout
    other_rank = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env=_env(CDINO_FAULT="step:1@1", RANK="0"))
    assert other_rank.returncode == 0  # the fault names rank 1 only


def test_resume_with_another_number_of_ranks(speakers, tmp_path):
    """A run checkpointed on 2 ranks continues on 1 (the global batch and the sampler do not
    depend on the world size) and ends close to the uninterrupted run."""
    cfg = tmp_path / "dino.yaml"
    cfg.write_text(DINO_CFG)
    args = lambda out: ["train", "--method", "dino", "--data", str(speakers), "--out", str(out),
                        "--config", str(cfg), "--resume"]
    run_cdino(args(tmp_path / "ref"), 1)
    killed = run_cdino(args(tmp_path / "mixed"), 2, check=False, CDINO_FAULT="step:6@1")
    assert killed.returncode != 0
    run_cdino(args(tmp_path / "mixed"), 1)
    log = (tmp_path / "mixed" / "train.log").read_text()
    assert "resumed from" in log
    from safetensors.numpy import load_file

    a = load_file(str(tmp_path / "ref" / "model" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "mixed" / "model" / "encoder.safetensors"))
    # Weights and BatchNorm statistics agree: each rank's statistics are combined after
    # every step as one process updates them, micro-batch after micro-batch (DDP's default
    # kept rank 0's: half the data, half the updates).
    assert sum(k.endswith("running_var") for k in a) > 20
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-4, err_msg=k)


def test_killed_rank_in_a_capped_correction_epoch_resumes_to_the_uninterrupted_model(speakers, init_model,
                                                                                      tmp_path):
    """The per-class move cap is global: every rank caps the parts of each global batch in
    order. A checkpoint written mid-epoch keeps the moves spent so far, so a killed rank's
    rerun caps the same moves as the uninterrupted run."""
    cfg = tmp_path / "pseudo.yaml"
    cfg.write_text(PSEUDO_CFG.replace("rounds: 2", "rounds: 1").replace("n_clusters: 4", "n_clusters: 8")
                   .replace("lr: 0.002", "lr: 0.01")
                   .replace("correction: {start_epoch: 1}",
                            "correction: {start_epoch: 1, temperature: 3.0, threshold: 0.2, "
                            "max_moves_per_class: 0.4}")
                   .replace("threads: 1}", "threads: 1, checkpoint_every: 1}"))
    args = lambda out: ["train", "--method", "pseudo", "--data", str(speakers), "--init", str(init_model),
                        "--out", str(out), "--config", str(cfg), "--resume"]
    run_cdino(args(tmp_path / "ref"), 2)
    epochs = json.loads((tmp_path / "ref" / "round1" / "summary.json").read_text())["epochs"]
    assert epochs[1]["moved_fraction"] > 0  # corrections move samples in the epoch killed below
    # 24 utterances / batch 8 = 3 steps an epoch: step 6 ends the first correction epoch,
    # resumed from the checkpoint of step 5.
    killed = run_cdino(args(tmp_path / "killed"), 2, check=False, CDINO_FAULT="step:6@1")
    assert killed.returncode != 0
    run_cdino(args(tmp_path / "killed"), 2)
    assert "resumed from" in (tmp_path / "killed" / "round1" / "train.log").read_text()
    assert same_encoder_weights(tmp_path / "ref" / "round1" / "model", tmp_path / "killed" / "round1" / "model")
    again = json.loads((tmp_path / "killed" / "round1" / "summary.json").read_text())["epochs"]
    assert [e["moved_fraction"] for e in again] == [e["moved_fraction"] for e in epochs]
