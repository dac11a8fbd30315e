"""The label-free validation split: held-out training utterances, pseudo-label trials."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdino.api import save_model_folder
from cdino.config import load_config
from cdino.data.kaldi_dir import DataDir, read_visual
from cdino.errors import ConfigError, DataError
from cdino.eval.validation import held_out, split_data_dir, validation_eer
from cdino.models.registry import build_encoder
from cdino.train.trainer import TrainConfig

from conftest import write_speaker_dir


def test_held_out_is_a_stable_hash_split():
    utts = [f"spk{i // 20:03d}-u{i:04d}" for i in range(2000)]
    got = held_out(utts, 0.05)
    assert 60 <= len(got) <= 140  # about 5 %
    assert got == held_out(list(reversed(utts)), 0.05)[::-1]  # order of the folder does not matter
    assert set(got) <= set(held_out(utts + [f"new{i}" for i in range(500)], 0.05))  # growing keeps it
    assert got != held_out(utts, 0.05, seed=1)
    assert len(held_out(utts[:40], 0.01)) == 10  # a small folder still gets a quarter, at most 20
    with pytest.raises(ConfigError, match="fraction"):
        held_out(utts, 0.7)
    with pytest.raises(DataError, match="too few"):
        held_out(utts[:5], 0.2)


def test_split_writes_disjoint_folders_with_their_visual_rows(tmp_path):
    src = write_speaker_dir(tmp_path / "data", 4, 10, 0.8, visual_dim=8)
    train, valid = split_data_dir(src, tmp_path / "split", 0.2)
    t, v, full = DataDir.load(train), DataDir.load(valid), DataDir.load(src)
    assert not set(t.utts) & set(v.utts) and set(t.utts) | set(v.utts) == set(full.utts)
    assert len(v) >= 10
    for part in (t, v):
        ids, rows = read_visual(part.root)
        src_ids, src_rows = read_visual(src)
        assert set(ids) <= set(part.utts)
        pos = {u: i for i, u in enumerate(src_ids)}
        assert np.array_equal(rows, src_rows[[pos[u] for u in ids]])
        assert part.wav[part.utts[0]] == full.wav[part.utts[0]]


def test_validation_eer_needs_no_labels_and_ranks_a_useful_embedding(tmp_path, monkeypatch):
    """Validation EER from pseudo-label trials: a model folder whose embedding separates the
    voices scores lower than a random one, and utt2spk is never read."""
    src = write_speaker_dir(tmp_path / "data", 4, 12, 1.0)
    (src / "utt2spk").unlink()
    (src / "spk2utt").unlink(missing_ok=True)
    cfg = load_config(TrainConfig, {"encoder": {"name": "ecapa_tdnn_small"}})
    torch.manual_seed(0)
    enc = build_encoder(cfg.encoder)
    folder = save_model_folder(tmp_path / "m", enc, cfg.encoder, cfg.fbank, np.zeros(enc.embed_dim, np.float32),
                               0.5, "test")
    res = validation_eer(folder, src, utts_per_cluster=8)
    assert res["valid_utts"] == 48 and res["valid_clusters"] >= 2
    assert 0.0 <= res["valid_eer"] <= 0.5
