"""The training loop keeps the device busy: no host reads per step, one per log window.

A host read of a CUDA tensor (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``,
``.cpu()``, ``nonzero()``, a boolean-mask index) waits for the GPU to finish everything
queued. CUDA's sync debug mode cannot run here, so these tests count the same calls on
the CPU instead: every such call made by cdino's own code while a tiny run trains, sorted
by where it happens (a training step, a log window, an epoch's start or end, a
checkpoint). The augmenter runs its accelerator path (``compact=False``), as on CUDA.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import cdino
from cdino.config import load_config
from cdino.data.kaldi_dir import DataDir, read_visual
from cdino.errors import ConfigError
from cdino.methods.dino import DinoMethod
from cdino.methods.pseudo_label import PseudoLabelMethod
from cdino.train.trainer import TrainConfig, Trainer, cuda_tf32, loader_workers

from conftest import write_speaker_dir

PACKAGE = str(Path(cdino.__file__).resolve().parent)
READS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__")
# Where a read may happen: once per log window, and outside the steps.
PHASES = ("_log_window", "on_epoch_start", "on_epoch_end", "save_checkpoint", "take_bad")

TINY = {
    "encoder": {"name": "ecapa_tdnn_small"},
    "trainer": {"epochs": 1, "steps_per_epoch": 6, "global_batch": 8, "log_every": 3, "progress": False,
                "tensorboard": False, "threads": 1},
    "optim": {"name": "adamw", "lr": 0.001, "lr_scale_with_batch": False, "warmup_epochs": 0.5},
    "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "global_seconds": 0.6,
             "local_seconds": 0.3, "n_local": 2},
    "augment": {"reverb_prob": 0.3, "noise_prob": 0.3, "reverb_noise_prob": 0.3},
    "pseudo": {"min_seconds": 0.8, "max_seconds": 1.0, "gate": {"warmup_epochs": 1},
               "correction": {"start_epoch": 1}},
}


def _phase(frame) -> str:
    while frame is not None:
        if frame.f_code.co_name in PHASES:
            return frame.f_code.co_name
        frame = frame.f_back
    return "step"


def _is_mask(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


@contextmanager
def host_reads():
    """Count host reads made by cdino's code, by phase (see :data:`PHASES`)."""
    counts: Counter = Counter()

    def note(what: str) -> None:
        caller = sys._getframe(2)
        if caller.f_code.co_filename.startswith(PACKAGE):
            counts[_phase(caller)] += 1
            counts[f"{_phase(caller)}:{what}@{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"] += 1

    def wrap(name, original, mask_only=False):
        def counted(self, *args, **kwargs):
            if not mask_only or (args and _is_mask(args[0])):
                note(name)
            return original(self, *args, **kwargs)
        return counted

    saved = {name: getattr(torch.Tensor, name) for name in (*READS, "__getitem__", "__setitem__")}
    saved_nonzero = torch.nonzero
    try:
        for name in READS:
            setattr(torch.Tensor, name, wrap(name, saved[name]))
        for name in ("__getitem__", "__setitem__"):
            setattr(torch.Tensor, name, wrap(f"mask{name}", saved[name], mask_only=True))
        torch.nonzero = wrap("torch.nonzero", saved_nonzero)
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero


def _fit_counting(trainer: Trainer) -> Counter:
    if trainer.frontend.augmenter is not None:
        trainer.frontend.augmenter.compact = False  # the accelerator's path: no nonzero()
    with host_reads() as counts:
        trainer.fit()
    return counts


def _windows(trainer: Trainer) -> int:
    return len(trainer.window_log)


def _detail(counts: Counter, phase: str) -> dict:
    return {k: v for k, v in counts.items() if k.startswith(phase + ":")}


def test_dino_steps_read_nothing_and_a_log_window_reads_once(tiny_data, tmp_path):
    trainer = Trainer(load_config(TrainConfig, TINY), DinoMethod(), DataDir.load(tiny_data), tmp_path / "d")
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    counts = _fit_counting(trainer)
    assert trainer.tf32 is None and trainer.num_workers == 0  # the CPU path as it was
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    assert _windows(trainer) == 2
    assert counts["step"] == 0, _detail(counts, "step")
    assert counts["_log_window"] == _windows(trainer), _detail(counts, "_log_window")


@pytest.mark.parametrize("visual", [False, True], ids=["audio", "audio_visual"])
def test_dlg_lc_steps_read_nothing(tmp_path, visual):
    """Pseudo-label steps with the gate, label correction, alignment and the move cap on
    (the second epoch), and with the visual view."""
    data_dir = write_speaker_dir(tmp_path / "train", 4, 6, 1.2, visual_dim=8 if visual else 0)
    data = DataDir.load(data_dir)
    true = data.speaker_labels()[0]
    noisy = true.copy()
    noisy[::5] = (noisy[::5] + 1) % 4
    kwargs = {}
    over = ["trainer.epochs=2", "trainer.steps_per_epoch=4", "trainer.log_every=2"]
    if visual:
        utts, rows = read_visual(data_dir)
        where = {u: i for i, u in enumerate(utts)}
        has = np.array([u in where for u in data.utts])
        vis = np.zeros((len(data.utts), rows.shape[1]), np.float32)
        vis[has] = rows[[where[u] for u in np.asarray(data.utts)[has]]]
        kwargs = {"visual": vis, "has_visual": has}
        over.append("pseudo.modality=audio_visual")
    method = PseudoLabelMethod(noisy, true_labels=true, **kwargs)
    trainer = Trainer(load_config(TrainConfig, TINY, overrides=over), method, data, tmp_path / "p")
    counts = _fit_counting(trainer)
    assert method.epoch_log[-1]["threshold"] is not None  # the gate was on in the second epoch
    assert counts["step"] == 0, _detail(counts, "step")
    assert counts["_log_window"] == _windows(trainer) == 4, _detail(counts, "_log_window")


def test_tf32_only_touches_cuda_and_is_restored():
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (m.allow_tf32, c.allow_tf32)
    with cuda_tf32(not before[0]):
        assert m.allow_tf32 is (not before[0]) and c.allow_tf32 is (not before[0])
    assert (m.allow_tf32, c.allow_tf32) == before
    cfg = load_config(TrainConfig, {"trainer": {"precision": "fp32", "tf32": False}})
    assert cfg.trainer.tf32 is False
    assert load_config(TrainConfig, {}).trainer.tf32 is True  # on by default (CUDA fp32 only)


def test_loader_workers_auto_is_zero_on_cpus():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert loader_workers(-1, cpu) == 0
    assert loader_workers(3, cpu) == 3 and loader_workers(0, cuda) == 0
    assert loader_workers(-1, cuda, cores=1, ranks=1) == 1 and loader_workers(-1, cuda, cores=2, ranks=1) == 1
    assert loader_workers(-1, cuda, cores=64, ranks=8) == 7
    assert loader_workers(-1, cuda, cores=64, ranks=1) == 8
    with pytest.raises(ConfigError, match="data.num_workers"):
        loader_workers(-2, cpu)
