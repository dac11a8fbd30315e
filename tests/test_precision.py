"""Training precision: ``auto`` is bf16 autocast on CPUs with native bf16 units and exact
fp32 elsewhere; ``fp32`` forces fp32; under autocast fbank, DINO prototypes and losses
stay fp32."""

from __future__ import annotations

import torch

from cdino.config import load_config
from cdino.data.kaldi_dir import DataDir
from cdino.methods.dino import DinoMethod
from cdino.models import inference
from cdino.models.dino_head import DinoHead
from cdino.train import trainer as trainer_mod
from cdino.train.trainer import TrainConfig, Trainer


def _cfg(precision: str) -> TrainConfig:
    return load_config(TrainConfig, {
        "encoder": {"name": "ecapa_tdnn_small"},
        "trainer": {"epochs": 1, "global_batch": 8, "log_every": 1, "progress": False,
                    "tensorboard": False, "threads": 1, "precision": precision},
        "optim": {"name": "adamw", "lr": 0.001, "lr_scale_with_batch": False, "warmup_epochs": 0.5},
        "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "global_seconds": 0.6,
                 "local_seconds": 0.3, "n_local": 2}})


def test_auto_follows_the_cpu_and_fp32_forces_exact(tiny_data, tmp_path, monkeypatch):
    data = DataDir.load(tiny_data)
    monkeypatch.setattr(trainer_mod, "fast_bf16", lambda device: True)
    assert Trainer(_cfg("auto"), DinoMethod(), data, tmp_path / "a").amp
    assert Trainer(_cfg("bf16"), DinoMethod(), data, tmp_path / "b").amp
    assert not Trainer(_cfg("fp32"), DinoMethod(), data, tmp_path / "c").amp
    monkeypatch.setattr(trainer_mod, "fast_bf16", lambda device: False)
    assert not Trainer(_cfg("auto"), DinoMethod(), data, tmp_path / "d").amp
    t = Trainer(_cfg("bf16"), DinoMethod(), data, tmp_path / "e")
    assert not t.amp
    t.log.close()
    log = (tmp_path / "e" / "train.log").read_text()
    assert "running fp32" in log and "precision fp32" in log


def test_fast_bf16_reads_the_cpu(monkeypatch):
    assert inference.fast_bf16("cuda") is False
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert inference.fast_bf16("cpu") is False  # no oneDNN: no fast bf16 convolutions


def test_bf16_steps_run_the_encoder_in_bf16_and_keep_features_and_losses_fp32(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "fast_bf16", lambda device: True)  # emulated where not native
    method = DinoMethod()
    t = Trainer(_cfg("auto"), method, DataDir.load(tiny_data), tmp_path / "exp")
    seen: dict[str, set] = {"conv": set(), "feats": set(), "logits": set(), "loss": set()}
    enc = method.student.encoder
    first_conv = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv1d))
    first_conv.register_forward_hook(lambda m, i, o: seen["conv"].add(o.dtype))
    method.ctx.frontend.register_forward_hook(lambda m, i, o: seen["feats"].add(o.dtype))
    method.student.head.last_layer.register_forward_hook(lambda m, i, o: seen["logits"].add(o.dtype))
    step = method.training_step

    def spy(*a, **k):
        loss, stats = step(*a, **k)
        seen["loss"].add(loss.dtype)
        return loss, stats

    monkeypatch.setattr(method, "training_step", spy)
    t.fit()
    assert seen["conv"] == {torch.bfloat16}
    assert seen["feats"] == {torch.float32}
    assert seen["logits"] == {torch.float32}
    assert seen["loss"] == {torch.float32}
    assert all(p.dtype == torch.float32 for p in method.student.parameters())
    assert t.step == t.total_steps > 0
    assert all(torch.isfinite(p).all() for p in method.student.parameters())


def test_dino_prototypes_are_fp32_under_autocast():
    torch.manual_seed(0)
    head = DinoHead(32, out_dim=256, hidden_dim=64, bottleneck_dim=16)
    x = torch.randn(8, 32)
    ref = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(x)
    assert got.dtype == torch.float32
    # only the MLP before the prototypes ran in bf16: cosines agree far better than bf16
    # rounding of the logits themselves (~4e-3) would allow for the prototype layer alone
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        proto = head.last_layer(z)
    assert torch.allclose(proto, head.last_layer(z), atol=1e-6)
    assert (got - ref).abs().max() < 0.05
