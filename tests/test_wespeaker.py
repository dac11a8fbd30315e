"""Importing WeSpeaker releases: embeddings equal WeSpeaker's own (from its features and from
the audio), the verb and CLI end to end, ONNX export, a training step, one-line errors.

The reference data in tests/data/wespeaker/ was made with WeSpeaker's code (see its README).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

import cdino
from cdino.cli import main
from cdino.config import from_dict
from cdino.errors import ConfigError, ModelFormatError
from cdino.eval.model_folder import read_model_folder
from cdino.models.registry import EncoderConfig, build_encoder
from cdino.models.wespeaker_import import read_wespeaker
from cdino.verbs import run_export, run_import_wespeaker

DATA = Path(__file__).parent / "data" / "wespeaker"
CLIPS = [DATA / f"clip{i}.wav" for i in range(3)]
MODELS = ["resnet34_narrow", "ecapa_tdnn_glob_narrow"]
#: Relative L2 error allowed on the embeddings and on their deviations from the clips' mean.
TOLERANCE = 1e-4


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Relative L2 error of the embeddings and of their deviations from the mean over clips
    (random models share a large common part, which alone would hide a wrong mapping)."""
    dev_got, dev_ref = got - got.mean(0), ref - ref.mean(0)
    return (float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
            float(np.linalg.norm(dev_got - dev_ref) / np.linalg.norm(dev_ref)))


def _reference(name: str) -> np.ndarray:
    return np.load(DATA / name / "embeddings.npy")


def _wespeaker_feats() -> list[torch.Tensor]:
    fbank = np.load(DATA / "fbank.npz")
    return [torch.from_numpy(fbank[f"clip{i}"])[None] for i in range(3)]


def _release(tmp_path: Path, name: str) -> Path:
    """A writable copy of a reference release folder."""
    return Path(shutil.copytree(DATA / name, tmp_path / name))


@pytest.fixture(scope="module", params=MODELS)
def imported(request, tmp_path_factory):
    """(reference name, model folder written by the verb)."""
    out = tmp_path_factory.mktemp("imported") / request.param
    run_import_wespeaker(DATA / request.param, out)
    return request.param, out


@pytest.mark.parametrize("name", MODELS)
def test_model_mapping_gives_wespeakers_embeddings_from_its_features(name):
    model = read_wespeaker(DATA / name)
    with torch.no_grad():
        got = np.concatenate([model.encoder(f).numpy() for f in _wespeaker_feats()])
    errors = _errors(got, _reference(name))
    assert max(errors) <= TOLERANCE, errors
    # sizes come from the tensors: config.yaml names ResNet34 (base 32) and ECAPA_TDNN_GLOB_c512
    cfg = model.config
    assert cfg.embed_dim == 64 and cfg.n_mels == 80
    if name.startswith("resnet"):
        assert (cfg.name, cfg.channels, cfg.blocks) == ("resnet_wespeaker", 8, [3, 4, 6, 3])
    else:
        assert (cfg.name, cfg.channels, cfg.aggregation_channels, cfg.global_context) == \
            ("ecapa_tdnn_wespeaker", 64, 1536, True)
    assert model.fbank.window == "hamming" and model.fbank.mean_norm and model.fbank.dither == 0


def test_model_folder_from_audio_gives_wespeakers_embeddings(imported):
    name, out = imported
    model = cdino.load_model(out)
    errors = _errors(model.embed_batch(CLIPS), _reference(name))
    assert max(errors) <= TOLERANCE, errors
    # the fp32 inference rewrite (BatchNorms folded where WeSpeaker's layer order allows)
    errors = _errors(cdino.load_model(out, optimize="fp32").embed_batch(CLIPS), _reference(name))
    assert max(errors) <= TOLERANCE, errors
    # cdino's fbank is WeSpeaker's features (Kaldi rounding aside)
    for clip, ref in zip(CLIPS, _wespeaker_feats()):
        assert (model.features(clip) - ref).abs().max() < 2e-3


def test_model_folder_records_where_it_came_from_and_an_unset_threshold(imported):
    name, out = imported
    folder = read_model_folder(out)
    assert not folder.mean.any() and folder.config.threshold == 0.0
    assert folder.config.threshold_source.startswith("unset")
    info = folder.config.info
    assert info["imported_from"] == "wespeaker" and info["source"] == str((DATA / name).resolve())
    assert info["wespeaker_model"] == yaml.safe_load((DATA / name / "config.yaml").read_text())["model"]
    assert info["checkpoint_dtype"] == "float16"
    assert isinstance(folder.encoder, type(build_encoder(folder.config.encoder)))


def test_import_and_verify_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["import", "wespeaker", str(DATA / "ecapa_tdnn_glob_narrow"), "--out", str(out)]) == 0
    assert "ecapa_tdnn_wespeaker" in capsys.readouterr().out
    assert main(["verify", "--model", str(out), "--device", "cpu", str(CLIPS[0]), str(CLIPS[1])]) == 0
    captured = capsys.readouterr()
    score = float(captured.out.split()[0].removeprefix("score="))
    ref = _reference("ecapa_tdnn_glob_narrow")
    cosine = ref[0] @ ref[1] / np.linalg.norm(ref[0]) / np.linalg.norm(ref[1])
    assert abs(score - cosine) < 1e-3  # verify runs the inference rewrite (bf16 on some CPUs)
    assert "threshold 0 is a placeholder" in captured.err
    assert main(["verify", "--model", str(out), "--device", "cpu", "--threshold", "0.5",
                 str(CLIPS[0]), str(CLIPS[1])]) == 0
    assert "placeholder" not in capsys.readouterr().err


def test_onnx_export_of_an_imported_model_gives_wespeakers_embeddings(imported, tmp_path):
    name, out = imported
    path = run_export(out, tmp_path / "encoder.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["embs"], {"feats": f.numpy()})[0] for f in _wespeaker_feats()])
    errors = _errors(got, _reference(name))
    assert max(errors) <= TOLERANCE, errors


def test_an_imported_model_trains(imported):
    """The encoder rebuilt from the folder's config takes its weights and a training step:
    every parameter gets a finite gradient, and the step changes the embeddings."""
    _, out = imported
    folder = read_model_folder(out)
    torch.manual_seed(0)
    encoder = build_encoder(folder.config.encoder)
    encoder.load_state_dict(folder.encoder.state_dict())
    encoder.train()
    feats = torch.randn(4, 120, 80)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.01)
    emb = encoder(feats)
    target = torch.nn.functional.normalize(torch.randn(4, emb.shape[1]), dim=1)
    loss = -(torch.nn.functional.normalize(emb, dim=1) * target).sum()
    loss.backward()
    grads = {n: p.grad for n, p in encoder.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for g in grads.values())
    optimizer.step()
    encoder.eval()
    with torch.no_grad():
        assert not torch.allclose(encoder(feats[:1]), folder.encoder(feats[:1]))


def test_fp32_checkpoint_with_wrapper_and_prefix_imports_the_same(tmp_path):
    src = _release(tmp_path, "resnet34_narrow")
    state = torch.load(src / "avg_model.pt", weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v.float() for k, v in state.items()}}, src / "avg_model.pt")
    feats = _wespeaker_feats()[0]
    with torch.no_grad():
        a = read_wespeaker(src).encoder(feats)
        b = read_wespeaker(DATA / "resnet34_narrow").encoder(feats)
    assert torch.equal(a, b)  # fp16 -> fp32 is exact


def test_wespeaker_resnet_config_is_strict():
    with pytest.raises(ConfigError, match="embed_bn"):
        from_dict(EncoderConfig, {"name": "resnet_wespeaker", "embed_bn": True})
    with pytest.raises(ConfigError, match="channels"):
        from_dict(EncoderConfig, {"name": "ecapa_tdnn_wespeaker", "channels": 100})


# ---------------------------------------------------------------------------
# errors: one line, naming the file


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key == "model":
            cfg["model"] = value
        else:
            cfg["model_args"][key] = value
    path.write_text(yaml.safe_dump(cfg))


def _edit_state(folder: Path, edit) -> None:
    path = folder / "avg_model.pt"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _nan(state: dict) -> None:
    state["layer1.0.bn1.running_var"][0] = float("nan")


BROKEN = {
    "no checkpoint": ("resnet34_narrow", lambda d: (d / "avg_model.pt").unlink(),
                      "avg_model.pt: missing"),
    "no config": ("resnet34_narrow", lambda d: (d / "config.yaml").unlink(), "config.yaml: missing"),
    "truncated checkpoint": ("resnet34_narrow",
                             lambda d: (d / "avg_model.pt").write_bytes((d / "avg_model.pt").read_bytes()[:5000]),
                             "avg_model.pt: not a readable PyTorch checkpoint"),
    "pickled object": ("resnet34_narrow",
                       lambda d: torch.save({"args": argparse.Namespace(a=1)}, d / "avg_model.pt"),
                       "avg_model.pt: not a readable PyTorch checkpoint"),
    "unknown model": ("resnet34_narrow", lambda d: _edit_config(d, model="CAMPPlus"),
                      "config.yaml: model CAMPPlus is not one cdino can import"),
    "bottleneck resnet": ("resnet34_narrow", lambda d: _edit_config(d, model="ResNet50"),
                          "bottleneck ResNets are not supported"),
    "name of the other family": ("ecapa_tdnn_glob_narrow", lambda d: _edit_config(d, model="ResNet34"),
                                 "model ResNet34 does not match avg_model.pt, which holds an ECAPA-TDNN"),
    "unknown layout": ("resnet34_narrow", lambda d: torch.save({"encoder.w": torch.zeros(3)}, d / "avg_model.pt"),
                       "avg_model.pt: tensors match no WeSpeaker layout"),
    "embed_dim disagrees": ("ecapa_tdnn_glob_narrow", lambda d: _edit_config(d, embed_dim=192),
                            "config.yaml: model_args.embed_dim is 192, the checkpoint's tensors say 64"),
    "feat_dim disagrees": ("resnet34_narrow", lambda d: _edit_config(d, feat_dim=64),
                           "config.yaml: model_args.feat_dim 64 does not fit seg_1.weight"),
    "two embedding layers": ("resnet34_narrow", lambda d: _edit_config(d, two_emb_layer=True),
                             "two embedding layers"),
    "extra tensor": ("ecapa_tdnn_glob_narrow",
                     lambda d: _edit_state(d, lambda s: s.update({"layer2.extra.weight": torch.zeros(2)})),
                     "tensor 'layer2.extra.weight' belongs to no part"),
    "missing tensor": ("ecapa_tdnn_glob_narrow",
                       lambda d: _edit_state(d, lambda s: s.pop("layer3.se_res2block.1.bns.4.running_var")),
                       "1 tensors missing"),
    "wrong shape": ("ecapa_tdnn_glob_narrow",
                    lambda d: _edit_state(d, lambda s: s.update({"layer2.se_res2block.3.linear1.weight": torch.zeros(32, 64)})),
                    r"tensor 'layer2.se_res2block.3.linear1.weight' has shape \(32, 64\)"),
    "nan weights": ("resnet34_narrow", lambda d: _edit_state(d, _nan), "holds NaN"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_release_cdino_cannot_import_is_a_one_line_error(case, tmp_path):
    name, breaking, message = BROKEN[case]
    src = _release(tmp_path, name)
    breaking(src)
    with pytest.raises(ModelFormatError, match=message) as info:
        read_wespeaker(src)
    assert "\n" not in str(info.value) and str(src) in str(info.value)


def test_the_cli_reports_an_unknown_architecture_in_one_line_exit_2(tmp_path, capsys):
    src = _release(tmp_path, "resnet34_narrow")
    _edit_config(src, model="CAMPPlus")
    rc = main(["import", "wespeaker", str(src), "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith(f"error: {src / 'config.yaml'}: model CAMPPlus")
    assert not (tmp_path / "model").exists()


def test_the_bench_check_prints_one_json_object_within_tolerance():
    bench = Path(__file__).resolve().parents[1] / "bench" / "check_wespeaker_import.py"
    got = subprocess.run([sys.executable, str(bench), str(DATA), "--models", "resnet34_narrow"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(bench.parents[1])})
    assert got.returncode == 0, got.stderr[-2000:]
    result = json.loads(got.stdout)
    (row,) = result["models"]
    assert row["within_tolerance"] and row["fbank_path"]["deviations"] <= TOLERANCE
