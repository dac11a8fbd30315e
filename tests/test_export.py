"""ONNX export of a model folder's encoder: names, dynamic shapes, parity with PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cdino.atomic import leftovers
from cdino.api import export_onnx, load_model, save_model_folder
from cdino.verbs import run_export
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
    assert path.exists() and not leftovers(path.parent)
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
    assert not target.exists() and not leftovers(tmp_path)


def test_onnx_file_carries_mean_threshold_and_fbank_settings(tmp_path):
    import json

    torch.manual_seed(0)
    enc = build_encoder(TINY).eval()
    mean = np.random.default_rng(3).normal(0, 0.1, 24).astype(np.float32)
    fbank = FbankConfig(frame_shift_ms=12.5, dither=0.0)
    model_dir = save_model_folder(tmp_path / "model", enc, TINY, fbank, mean, 0.3125, "pseudo-label EER")
    path = export_onnx(model_dir, tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(props) >= {"cdino.mean", "cdino.threshold", "cdino.fbank"}
    np.testing.assert_array_equal(np.asarray(json.loads(props["cdino.mean"]), np.float32), mean)
    assert json.loads(props["cdino.threshold"]) == 0.3125
    assert json.loads(props["cdino.threshold_source"]) == "pseudo-label EER"
    got_fbank = json.loads(props["cdino.fbank"])
    assert got_fbank["frame_shift_ms"] == 12.5 and got_fbank["n_mels"] == 80
    assert FbankConfig(**got_fbank) == fbank  # the file alone rebuilds the front end
    assert json.loads(props["cdino.embed_dim"]) == 24
    # ONNX Runtime sees the same map, and the graph still runs.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["cdino.threshold"] == props["cdino.threshold"]
    assert session.run(["embs"], {"feats": np.zeros((1, 50, 80), np.float32)})[0].shape == (1, 24)
