"""Encoders, DINO head, AAM-softmax and inference rewrites: behaviour, not just shapes."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from cdino.config import from_dict
from cdino.errors import ConfigError
from cdino.models.aam_softmax import AAMSoftmax, aam_logits
from cdino.models.dino_head import DinoHead
from cdino.models.inference import optimize_for_inference
from cdino.models.pooling import VARIANCE_FLOOR, AttentiveStatsPool, _mean_std, Moments, WeightedMoments
from cdino.models.registry import VARIANTS, EncoderConfig, build_encoder, count_parameters, describe

SMALL = ("ecapa_tdnn_small", "resnet34_small")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and a busy machine makes OpenMP barriers slow)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (as after training)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(0.4 * torch.rand(n, generator=gen) - 0.2)


def _feats(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, frames, 80, generator=gen) + torch.linspace(-1, 1, 80)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_encoder_maps_any_length_to_one_embedding(name):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(name=name)).eval()
    with torch.no_grad():
        a = enc(_feats(2, 41))
        b = enc(_feats(1, 67))
    assert a.shape == (2, enc.embed_dim) and b.shape == (1, enc.embed_dim)
    assert enc.embed_dim == (192 if name.startswith("ecapa") else 256)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    # different inputs give different embeddings (the model is not constant)
    assert (a[0] - a[1]).abs().max() > 1e-4


def test_parameter_counts_match_the_published_sizes():
    n512 = count_parameters(build_encoder(EncoderConfig(name="ecapa_tdnn", channels=512)))
    n1024 = count_parameters(build_encoder(EncoderConfig(name="ecapa_tdnn", channels=1024)))
    assert abs(n512 - 6.2e6) < 0.3e6, n512
    assert abs(n1024 - 14.7e6) < 0.5e6, n1024  # the paper's C=1024 size
    assert 5.5e6 < count_parameters(build_encoder(EncoderConfig(name="resnet34"))) < 7.5e6
    assert 0.1e6 < count_parameters(build_encoder(EncoderConfig(name="ecapa_tdnn_small"))) < 0.45e6
    assert "6.19 M" in describe(EncoderConfig())


def test_encoder_config_is_strict_and_resolves_variant_defaults():
    with pytest.raises(ConfigError, match="name: unknown encoder 'tdnn'"):
        from_dict(EncoderConfig, {"name": "tdnn"})
    with pytest.raises(ConfigError, match="channels"):
        from_dict(EncoderConfig, {"channels": 100})  # not a multiple of the Res2 scale
    with pytest.raises(ConfigError, match="blocks"):
        from_dict(EncoderConfig, {"name": "resnet34", "blocks": [1, 2]})
    r = EncoderConfig(name="resnet34_small").resolved()
    assert (r.channels, r.embed_dim, r.blocks) == (8, 256, [2, 2, 2, 2])
    r = EncoderConfig(name="ecapa_tdnn_small", channels=32).resolved()
    assert r.aggregation_channels == 96
    assert EncoderConfig(name="ecapa_tdnn", channels=1024).resolved().aggregation_channels == 1536
    enc = build_encoder(EncoderConfig(name="ecapa_tdnn_small", embed_dim=48, embed_bn=True))
    assert enc.embed_dim == 48 and isinstance(enc.embed_bn, torch.nn.BatchNorm1d)


@pytest.mark.parametrize("name", SMALL)
def test_bf16_autocast_forward_is_close_to_fp32_and_trains(name):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(name=name))
    _randomise_batchnorm(enc)
    enc.eval()
    x = _feats(3, 90)
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(x)
        whole = copy.deepcopy(enc).to(torch.bfloat16)(x.bfloat16())  # no autocast: all bf16
    assert torch.isfinite(low).all() and whole.dtype == torch.bfloat16
    assert F.cosine_similarity(ref, low.float()).min() > 0.99
    assert F.cosine_similarity(ref, whole.float()).min() > 0.98
    # training step under autocast, on silence too: the variance clamp keeps gradients finite
    enc.train()
    x = torch.cat([_feats(2, 60), torch.zeros(1, 60, 80)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x)
    out.float().pow(2).sum().backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_encoder_traces_without_graph_breaks():
    torch._dynamo.reset()
    enc = build_encoder(EncoderConfig(name="ecapa_tdnn_small")).eval()
    compiled = torch.compile(enc, backend="eager", fullgraph=True)  # fails on any graph break
    x = _feats(2, 70)
    with torch.no_grad():
        assert torch.allclose(compiled(x), enc(x), atol=1e-5)


@pytest.mark.parametrize("name", SMALL)
def test_onnx_export_has_dynamic_batch_and_frames(name, tmp_path):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(name=name, embed_bn=True))
    _randomise_batchnorm(enc)
    enc.eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(enc, (_feats(2, 150),), str(path), input_names=["feats"], output_names=["embs"],
                      dynamic_axes={"feats": {0: "batch", 1: "frames"}, "embs": {0: "batch"}},
                      opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, frames in ((1, 83), (3, 240)):
        x = _feats(batch, frames, seed=batch)
        with torch.no_grad():
            ref = enc(x).numpy()
        got = session.run(["embs"], {"feats": x.numpy()})[0]
        assert got.shape == ref.shape
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        assert cos.min() > 0.9999


def test_dino_head_logits_are_cosines_to_unit_prototypes():
    torch.manual_seed(0)
    head = DinoHead(32, out_dim=500, hidden_dim=64, bottleneck_dim=16)
    x = 5 * torch.randn(8, 32)
    logits = head(x)
    assert logits.shape == (8, 500)
    assert logits.abs().max() <= 1.0 + 1e-5  # |<x/|x|, w/|w|>| <= 1
    # gain fixed at 1: rescaling the prototype rows changes nothing
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.rand(500, 1) * 10 + 0.1)
    assert torch.allclose(head(x), logits, atol=1e-5)
    # the logit of a prototype equal to the bottleneck output is 1
    with torch.no_grad():
        z = F.normalize(head.mlp(x), dim=-1)
        head.last_layer.weight[7] = 3 * z[2]
    assert head(x)[2, 7].item() == pytest.approx(1.0, abs=1e-5)
    # last_layer is what the trainer freezes in epoch 1: gradients reach it otherwise
    head(x).sum().backward()
    assert [p.shape for p in head.last_layer.parameters()] == [(500, 16)]
    assert head.last_layer.weight.grad is not None
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in DinoHead(8, 10, 16, 4, use_bn=False).modules())


def _aam_direct(cos: np.ndarray, labels: np.ndarray, m: float, s: float) -> np.ndarray:
    out = cos.astype(np.float64).copy()
    for i, y in enumerate(labels):
        theta = math.acos(min(max(cos[i, y], -1.0), 1.0))
        out[i, y] = math.cos(theta + m) if theta + m <= math.pi else cos[i, y] - m * math.sin(m)
    return s * out


def test_aam_softmax_matches_the_angular_margin_formula():
    torch.manual_seed(0)
    aam = AAMSoftmax(12, 7, margin=0.3, scale=30.0)
    emb = torch.randn(40, 12)
    labels = torch.randint(0, 7, (40,))
    cos = aam.cosine(emb)
    ref_cos = F.normalize(emb, dim=1) @ F.normalize(aam.weight, dim=1).T
    assert torch.allclose(cos, ref_cos, atol=1e-6)
    got = aam(emb, labels).detach().numpy()
    want = _aam_direct(cos.detach().numpy(), labels.numpy(), 0.3, 30.0)
    assert np.allclose(got, want, atol=1e-3)
    assert torch.allclose(aam(emb, labels, margin=0.0), 30.0 * cos, atol=1e-5)
    # past theta = pi - m the fallback cos(theta) - m sin(m) applies
    c = torch.tensor([[-0.99, 0.5], [0.2, 0.1]])
    y = torch.tensor([0, 0])
    got = aam_logits(c, y, 0.3, 1.0).numpy()
    assert np.allclose(got, _aam_direct(c.numpy(), y.numpy(), 0.3, 1.0), atol=1e-5)
    assert got[0, 0] == pytest.approx(-0.99 - 0.3 * math.sin(0.3), abs=1e-6)
    # the target logit decreases monotonically with the angle
    grid = torch.linspace(-1, 1, 201).unsqueeze(1)
    target = aam_logits(grid, torch.zeros(201, dtype=torch.long), 0.2, 1.0)[:, 0]
    assert (target[1:] >= target[:-1]).all()
    # easy margin: no margin where cos <= 0
    easy = aam_logits(c, y, 0.3, 1.0, easy_margin=True)
    assert easy[0, 0].item() == pytest.approx(-0.99, abs=1e-6)


def test_aam_softmax_is_fp32_under_autocast():
    aam = AAMSoftmax(16, 5)
    emb = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aam(emb.bfloat16(), torch.tensor([0, 1, 2, 3]))
    assert out.dtype == torch.float32
    assert torch.allclose(out, aam(emb, torch.tensor([0, 1, 2, 3])), atol=0.3)  # bf16 input rounding


@pytest.mark.parametrize("name", SMALL)
def test_optimized_encoder_matches_eager_for_any_shape(name):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(name=name, embed_bn=True))
    _randomise_batchnorm(enc)
    enc.eval()
    fast = optimize_for_inference(enc, precision="fp32")
    eager_only = optimize_for_inference(enc, precision="fp32", trace=False)
    assert fast.embed_dim == enc.embed_dim
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in eager_only.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in enc.modules())  # original kept
    for batch, frames in ((1, 98), (3, 311)):
        x = _feats(batch, frames, seed=frames)
        with torch.no_grad():
            ref = enc(x)
            for model in (fast, eager_only):
                got = model(x)
                assert got.shape == ref.shape
                assert F.cosine_similarity(ref, got).min() > 0.99999
                assert torch.allclose(ref, got, rtol=1e-3, atol=1e-4)


def test_bf16_inference_of_ecapa_512_stays_within_cosine_tolerance():
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(name="ecapa_tdnn", embed_bn=True))
    _randomise_batchnorm(enc)
    enc.eval()
    fast = optimize_for_inference(enc, precision="bf16", trace=False)
    assert any(p.dtype == torch.bfloat16 for p in fast.parameters())
    x = _feats(2, 150)
    with torch.no_grad():
        cos = F.cosine_similarity(enc(x), fast(x))
    assert cos.min() > 0.9999
    with pytest.raises(ValueError, match="precision"):
        optimize_for_inference(enc, precision="fp16")


def _reference_mean_std(x, weights=None):
    """The pooling statistics as plain tensor operations (what autograd differentiates)."""
    x = x.double()
    if weights is None:
        mean, second = x.mean(-1), (x * x).mean(-1)
    else:
        mean, second = (x * weights).sum(-1), (x * x * weights).sum(-1)
    return mean, (second - mean * mean).clamp(min=VARIANCE_FLOOR).sqrt()


@pytest.mark.parametrize("weighted", [False, True])
def test_pooling_moments_have_the_gradients_of_the_plain_formula(weighted):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 5, 17, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    x.data[0, 0] = 0.25  # a constant channel: variance below the floor, clamped
    w = torch.softmax(torch.randn(3, 5, 17, generator=gen, dtype=torch.float64), -1).requires_grad_() if weighted else None
    inputs = (x, w) if weighted else (x,)
    fused = Moments.apply if not weighted else WeightedMoments.apply
    assert torch.autograd.gradcheck(fused, inputs)  # closed-form backward = numerical
    mean, std = _mean_std(*inputs)
    ref_mean, ref_std = _reference_mean_std(*inputs)
    assert torch.allclose(mean.double(), ref_mean, rtol=1e-6) and torch.allclose(std.double(), ref_std, rtol=1e-5)
    up_mean, up_std = torch.randn(3, 5, generator=gen, dtype=torch.float64), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((mean * up_mean).sum() + (std * up_std).sum(), inputs)
    want = torch.autograd.grad((ref_mean * up_mean).sum() + (ref_std * up_std).sum(), inputs)
    for g, r in zip(got, want):
        assert torch.allclose(g.double(), r, rtol=1e-4, atol=1e-7)


def test_attentive_pool_matches_the_plain_formula_in_training(monkeypatch):
    """The fused moments, under bf16 autocast as in training: output and every gradient."""
    from cdino.models import pooling

    torch.manual_seed(0)
    pool = AttentiveStatsPool(24, 16, global_context=True)
    x = torch.randn(4, 24, 31, requires_grad=True)
    outs = {}
    for plain in (False, True):
        pool.zero_grad()
        x.grad = None
        with monkeypatch.context() as m:
            if plain:
                m.setattr(pooling, "use_plain_ops", lambda: True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = pool(x.bfloat16())
            (y.float() * torch.linspace(-1, 1, y.shape[1])).sum().backward()
        outs[plain] = [y.detach().float(), x.grad.clone()] + [p.grad.clone() for p in pool.parameters()]
    for a, b in zip(outs[False], outs[True]):
        assert torch.allclose(a, b, rtol=2e-2, atol=2e-3 * b.abs().max().item())
