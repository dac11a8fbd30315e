"""ONNX export of a model folder's encoder: names, dynamic shapes, parity with PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cdino.api import export_onnx, load_model, run_export, save_model_folder
from cdino.errors import ModelFormatError
from cdino.frontend.fbank import FbankConfig
from cdino.models.registry import EncoderConfig, build_encoder

TINY = EncoderConfig(name="ecapa_tdnn_small", channels=16, embed_dim=24, embed_bn=True)


@pytest.fixture()
def model_dir(tmp_path):
    torch.manual_seed(0)
    enc = build_encoder(TINY)
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return save_model_folder(tmp_path / "model", enc.eval(), TINY, FbankConfig(),
                             np.zeros(24, np.float32), 0.3, "test")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_export_matches_pytorch_for_any_batch_and_length(model_dir, tmp_path, capsys):
    path = run_export(model_dir, tmp_path / "out" / "encoder.onnx")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    assert "cosine" in capsys.readouterr().out
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["feats"] and [o.name for o in graph.output] == ["embs"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param and dims[2].dim_value == 80

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    encoder = load_model(model_dir).encoder
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 4):
        for frames in (57, 311):
            feats = torch.randn(batch, frames, 80, generator=gen)
            with torch.inference_mode():
                ref = encoder(feats).numpy()
            got = session.run(["embs"], {"feats": feats.numpy()})[0]
            assert got.shape == (batch, 24)
            assert _cos(ref, got).min() > 0.9999


def test_export_refuses_a_model_whose_onnx_output_differs(model_dir, tmp_path, monkeypatch):
    real_session = ort.InferenceSession

    class Skewed:
        def __init__(self, *args, **kwargs):
            self.inner = real_session(*args, **kwargs)

        def run(self, names, feeds):
            out = self.inner.run(names, feeds)
            return [out[0] + np.linspace(0, 1, out[0].shape[1], dtype=np.float32)]

    monkeypatch.setattr(ort, "InferenceSession", Skewed)
    target = tmp_path / "bad.onnx"
    with pytest.raises(ModelFormatError, match="differ from PyTorch"):
        export_onnx(model_dir, target)
    assert not target.exists() and not list(tmp_path.glob("*.tmp"))
