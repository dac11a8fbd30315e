"""Label-free alignment to a new domain: target BatchNorm statistics, mean and calibration."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cdino.data.kaldi_dir import DataDir
from cdino.data.stores import MemoryStore
from cdino.train.batchnorm import target_batchnorm

from conftest import write_speaker_dir


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(80, momentum=0.1)

    def forward(self, feats):  # (B, T, 80) -> (B, 80)
        return self.bn(feats.mean(1))


def test_target_batchnorm_sets_the_running_statistics_of_the_target_and_restores_momentum(tmp_path):
    data = DataDir.load(write_speaker_dir(tmp_path / "d", n_speakers=2, utts_per_speaker=3, seconds=1.0))
    store = MemoryStore(data, min_seconds=0.1, progress=False)
    net = _Net()
    net.bn.running_mean.fill_(5.0)
    net.bn.running_var.fill_(9.0)
    fbank = lambda w: torch.stack([w[:, i::80][:, :50] for i in range(80)], -1)  # noqa: E731 (B, 50, 80)
    assert target_batchnorm(net, fbank, store, "cpu", seconds=0.5, batch=4, batches=3) == 1
    assert net.bn.momentum == 0.1 and not net.training
    # the plain average of the batches' statistics: far from the planted 5 / 9, the data's scale
    assert net.bn.running_mean.abs().max() < 0.5 and net.bn.running_var.max() < 1.0
    assert int(net.bn.num_batches_tracked) == 3
    # the same crops again give the same statistics (seeded)
    again = _Net()
    target_batchnorm(again, fbank, store, "cpu", seconds=0.5, batch=4, batches=3)
    torch.testing.assert_close(again.bn.running_mean, net.bn.running_mean)


def test_align_to_domain_writes_a_model_folder_centred_on_the_target(tmp_path):
    from cdino.config import load_config
    from cdino.eval.model_folder import read_model_folder, save_model_folder
    from cdino.models.registry import build_encoder
    from cdino.train.domain import align_to_domain
    from cdino.train.trainer import TrainConfig

    target = write_speaker_dir(tmp_path / "target", n_speakers=4, utts_per_speaker=4, seconds=1.0, seed=3)
    cfg = load_config(TrainConfig, {"encoder": {"name": "ecapa_tdnn_small", "channels": 16},
                                    "trainer": {"progress": False, "threads": 1}, "data": {"store": "memory"}})
    torch.manual_seed(0)
    enc = build_encoder(cfg.encoder)
    src = save_model_folder(tmp_path / "src", enc, cfg.encoder, cfg.fbank, np.ones(enc.embed_dim, np.float32),
                            0.5, "test")
    out = align_to_domain(src, cfg, target, tmp_path / "aligned")
    got = read_model_folder(out)
    assert not np.allclose(got.mean, 1.0)  # the target's mean, not the source's
    assert got.calibration is not None and "target" in got.config.info
    assert got.calibration.domain == str(target)  # fitted on the target, and says so
    before = read_model_folder(src).encoder.state_dict()
    after = got.encoder.state_dict()
    moved = [k for k in before if k.endswith("running_var") and not torch.allclose(before[k], after[k])]
    weights = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert moved and not weights  # statistics re-estimated, weights untouched
