"""Fault injection: SIGKILL a training run mid-step, mid-checkpoint-write, mid-clustering and
mid-extraction; resumed, it ends with the same model as an uninterrupted run (CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cdino.testing.faults import run_until_done, same_encoder_weights, train_command
from cdino.train import checkpoint as ckpt

CFG = ("encoder: {name: ecapa_tdnn_small}\n"
       "trainer: {epochs: 6, global_batch: 8, progress: false, tensorboard: false, threads: 1, checkpoint_every: 1}\n"
       "optim: {name: adamw, lr: 0.001, lr_scale_with_batch: false, warmup_epochs: 0.3}\n"
       "dino: {out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_seconds: 0.6, local_seconds: 0.3, n_local: 2}\n"
       "cluster_aware: {n_clusters: 4, recluster_every: 1}\n")


def _same_model(a: Path, b: Path) -> None:
    assert same_encoder_weights(a, b)
    np.testing.assert_array_equal(np.load(a / "mean.npy"), np.load(b / "mean.npy"))


def test_killed_runs_resume_to_the_uninterrupted_model(tiny_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CFG)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CDINO_NO_PROGRESS": "1"}
    rng = np.random.default_rng(7)
    # Reference: uninterrupted DINO, then C-DINO from it.
    t_dino = run_until_done(train_command("dino", tiny_data, tmp_path / "ref_dino", cfg), [], 0, rng, (0, 0),
                            env)["final_seconds"]
    t_cdino = run_until_done(train_command("cdino", tiny_data, tmp_path / "ref_cdino", cfg, tmp_path / "ref_dino"),
                             [], 0, rng, (0, 0), env)["final_seconds"]
    # The same, killed again and again: first at each named point, then at random times
    # (start-up, steps, checkpoint writes, clustering, export).
    a = run_until_done(train_command("dino", tiny_data, tmp_path / "dino", cfg),
                       ["checkpoint_write:3", "checkpoint_write:2"], 2, rng, (0.4 * t_dino, 0.7 * t_dino), env)
    b = run_until_done(train_command("cdino", tiny_data, tmp_path / "cdino", cfg, tmp_path / "dino"),
                       ["clustering:2", "extraction:1", "checkpoint_write:2"], 1, rng,
                       (0.4 * t_cdino, 0.7 * t_cdino), env)
    assert a["named_kills"] == 2 and b["named_kills"] == 3
    assert a["random_kills"] + b["random_kills"] >= 1
    _same_model(tmp_path / "ref_dino" / "model", tmp_path / "dino" / "model")
    _same_model(tmp_path / "ref_cdino" / "model", tmp_path / "cdino" / "model")
    for run in ("dino", "cdino"):  # no half-written file is left where a resume would look
        folder = tmp_path / run / "checkpoints"
        for _, path in ckpt.list_checkpoints(folder):
            ckpt.load_checkpoint(path)
        assert not list(folder.glob(".step-*.tmp-*"))
