"""Read a WeSpeaker release folder (``avg_model.pt`` + ``config.yaml``) as a cdino encoder.

:func:`read_wespeaker` loads the checkpoint without running code (``weights_only``),
recognises its layout from the tensor names (WeSpeaker's basic-block ResNet with TSTP
pooling, or its ECAPA-TDNN with ASTP pooling), reads every size from the tensor shapes
(the factory name in ``config.yaml``, e.g. ``ECAPA_TDNN_GLOB_c512``, only names the
family), renames the tensors into :mod:`cdino.models.wespeaker`'s layout, casts them to
fp32 and drops the training head (``projection.*``). ``config.yaml``'s ``model_args`` and
``dataset_args`` are checked against the checkpoint and give the fbank settings.

Anything else (another architecture, a variant cdino lacks, a corrupt file) is a
:class:`~cdino.errors.ModelFormatError` naming the file. Writing the model folder is the
caller's (``cdino import wespeaker``, :func:`cdino.verbs.run_import_wespeaker`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from cdino.errors import ConfigError, ModelFormatError
from cdino.frontend.fbank import FbankConfig
from cdino.models.registry import EncoderConfig, build_encoder

CHECKPOINT_FILE = "avg_model.pt"
CONFIG_FILE = "config.yaml"

#: WeSpeaker model names (``config.yaml``'s ``model``) per layout cdino imports.
RESNET_MODELS = ("ResNet18", "ResNet34")
ECAPA_MODELS = ("ECAPA_TDNN", "ECAPA_TDNN_c512", "ECAPA_TDNN_c1024",
                "ECAPA_TDNN_GLOB_c512", "ECAPA_TDNN_GLOB_c1024")

#: WeSpeaker tensor name -> cdino tensor name, per layout (first full match wins).
RESNET_NAMES = [
    (r"conv1\.(weight)", r"stem.0.\1"),
    (r"bn1\.(.+)", r"stem.1.\1"),
    (r"layer1\.(.+)", r"stages.0.\1"),
    (r"layer2\.(.+)", r"stages.1.\1"),
    (r"layer3\.(.+)", r"stages.2.\1"),
    (r"layer4\.(.+)", r"stages.3.\1"),
    (r"seg_1\.(.+)", r"embedding.\1"),
]
#: The same inside each of ECAPA's SE-Res2 blocks (WeSpeaker's layer2..4, cdino's blocks.0..2)
ECAPA_BLOCK_NAMES = [
    (r"se_res2block\.([02])\.conv\.(.+)", r"body.\1.0.\2"),
    (r"se_res2block\.([02])\.bn\.(.+)", r"body.\1.2.\2"),
    (r"se_res2block\.1\.convs\.(\d+)\.(.+)", r"body.1.layers.\1.0.\2"),
    (r"se_res2block\.1\.bns\.(\d+)\.(.+)", r"body.1.layers.\1.2.\2"),
    (r"se_res2block\.3\.linear1\.(.+)", r"body.3.down.\1"),
    (r"se_res2block\.3\.linear2\.(.+)", r"body.3.up.\1"),
]
ECAPA_NAMES = [
    (r"layer1\.conv\.(.+)", r"input_layer.0.\1"),
    (r"layer1\.bn\.(.+)", r"input_layer.2.\1"),
    *[(rf"layer{n}\.{pattern}", f"blocks.{n - 2}.{target}")
      for n in (2, 3, 4) for pattern, target in ECAPA_BLOCK_NAMES],
    (r"conv\.(.+)", r"aggregation.0.\1"),
    (r"pool\.linear1\.bias", r"pool.frame_proj.bias"),  # its weight is split (see _ecapa)
    (r"pool\.linear2\.(.+)", r"pool.score.\1"),
    (r"bn\.(.+)", r"pool_bn.\1"),
    (r"linear\.(.+)", r"embedding.\1"),
    (r"bn2\.(.+)", r"embed_bn.\1"),
]
#: The training head a released checkpoint carries; not part of the embedding extractor.
HEAD_PREFIX = "projection."


@dataclass
class WeSpeakerModel:
    """A WeSpeaker release read by :func:`read_wespeaker`."""

    encoder: nn.Module  # the cdino encoder holding WeSpeaker's weights, fp32, eval mode
    config: EncoderConfig  # what rebuilds it (resolved sizes)
    fbank: FbankConfig  # WeSpeaker's front end, which the encoder expects
    info: dict[str, Any]  # where it came from: imported_from, source, wespeaker_model, ...


def wespeaker_fbank(n_mels: int = 80, sample_rate: int = 16000, frame_length_ms: float = 25.0,
                    frame_shift_ms: float = 10.0) -> FbankConfig:
    """WeSpeaker's features: Kaldi fbank with a hamming window, dither 0 (inference),
    16-bit sample scale, the other Kaldi defaults, per-utterance mean subtracted."""
    return FbankConfig(sample_rate=sample_rate, n_mels=n_mels, frame_length_ms=frame_length_ms,
                       frame_shift_ms=frame_shift_ms, dither=0.0, window="hamming",
                       mean_norm=True, wave_scale=32768.0)


def read_wespeaker(folder: str | os.PathLike) -> WeSpeakerModel:
    """Read a WeSpeaker release folder into a cdino encoder (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: WeSpeaker model folder not found")
    cfg_path, ckpt_path = folder / CONFIG_FILE, folder / CHECKPOINT_FILE
    for path in (cfg_path, ckpt_path):
        if not path.is_file():
            raise ModelFormatError(f"{path}: missing (a WeSpeaker release holds {CHECKPOINT_FILE} "
                                   f"and {CONFIG_FILE})")
    name, model_args, dataset_args = _read_config(cfg_path)
    state = _read_checkpoint(ckpt_path)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
    layout = _layout(state, ckpt_path)
    if name not in (RESNET_MODELS if layout == "resnet" else ECAPA_MODELS):
        raise ModelFormatError(f"{cfg_path}: model {name} does not match {ckpt_path.name}, which holds "
                               f"{'a ResNet' if layout == 'resnet' else 'an ECAPA-TDNN'}")
    if layout == "resnet":
        enc_cfg, renamed = _resnet(state, ckpt_path, model_args, cfg_path)
    else:
        enc_cfg, renamed = _ecapa(state, ckpt_path, name, model_args, cfg_path)
    _check_arg(model_args, "embed_dim", enc_cfg.embed_dim, cfg_path)
    encoder = _load(enc_cfg, renamed, ckpt_path)
    fbank = _fbank(dataset_args, enc_cfg.n_mels, cfg_path)
    info = {"imported_from": "wespeaker", "source": str(folder.resolve()), "wespeaker_model": name,
            "wespeaker_model_args": model_args, "checkpoint_dtype": ", ".join(dtypes)}
    return WeSpeakerModel(encoder, enc_cfg.resolved(), fbank, info)


# ---------------------------------------------------------------------------
# config.yaml and avg_model.pt


def _read_config(path: Path) -> tuple[str, dict, dict]:
    """``model``, ``model_args`` and ``dataset_args`` of a WeSpeaker ``config.yaml``."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelFormatError(f"{path}: not readable YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise ModelFormatError(f"{path}: no 'model' name (not a WeSpeaker config.yaml?)")
    name = data["model"]
    if name not in RESNET_MODELS + ECAPA_MODELS:
        hint = " (bottleneck ResNets are not supported)" if name.startswith("ResNet") else ""
        raise ModelFormatError(f"{path}: model {name} is not one cdino can import{hint}; known: "
                               f"{', '.join(RESNET_MODELS + ECAPA_MODELS)}")
    sections = []
    for key in ("model_args", "dataset_args"):
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise ModelFormatError(f"{path}: {key} must be a mapping")
        sections.append(section)
    return name, sections[0], sections[1]


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``avg_model.pt``, loaded without executing code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises zip, pickle and runtime errors for corrupt files
        reason = " ".join(str(exc).split())[:120]
        raise ModelFormatError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ModelFormatError(f"{path}: not a state dict of named tensors")
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}


def _layout(state: dict[str, torch.Tensor], path: Path) -> str:
    """``resnet`` or ``ecapa``, recognised by tensors only that layout has."""
    if {"conv1.weight", "layer1.0.conv1.weight", "seg_1.weight"} <= state.keys():
        return "resnet"
    if {"layer1.conv.weight", "layer2.se_res2block.0.conv.weight", "conv.weight", "linear.weight"} <= state.keys():
        return "ecapa"
    raise ModelFormatError(f"{path}: tensors match no WeSpeaker layout cdino knows (ResNet, "
                           f"ECAPA-TDNN); first tensor '{next(iter(state))}'")


def _check_arg(args: dict, key: str, value: Any, cfg_path: Path) -> None:
    """``model_args[key]``, where given, must equal what the checkpoint says."""
    if key in args and args[key] != value:
        raise ModelFormatError(f"{cfg_path}: model_args.{key} is {args[key]!r}, the checkpoint's "
                               f"tensors say {value!r}")


def _fbank(dataset_args: dict, n_mels: int, cfg_path: Path) -> FbankConfig:
    """WeSpeaker's front end with the rate and frame sizes the model was trained with."""
    frontend = dataset_args.get("frontend", "fbank")
    if frontend != "fbank":
        raise ModelFormatError(f"{cfg_path}: dataset_args.frontend {frontend!r}: cdino imports "
                               "fbank models only")
    fbank_args = dataset_args.get("fbank_args") or {}
    _check_arg(fbank_args, "num_mel_bins", n_mels, cfg_path)
    try:
        cfg = wespeaker_fbank(n_mels, int(dataset_args.get("resample_rate", 16000)),
                              float(fbank_args.get("frame_length", 25)),
                              float(fbank_args.get("frame_shift", 10)))
        cfg.validate()
    except (TypeError, ValueError, ConfigError) as exc:
        raise ModelFormatError(f"{cfg_path}: dataset_args: {exc}") from None
    return cfg


# ---------------------------------------------------------------------------
# the two layouts


def _rename(state: dict[str, torch.Tensor], names: list[tuple[str, str]], path: Path) -> dict[str, tuple[str, torch.Tensor]]:
    """cdino name -> (WeSpeaker name, tensor); a tensor no rule names is an error."""
    out = {}
    for key, value in state.items():
        for pattern, target in names:
            match = re.fullmatch(pattern, key)
            if match:
                out[match.expand(target)] = (key, value)
                break
        else:
            raise ModelFormatError(f"{path}: tensor '{key}' belongs to no part of the architecture "
                                   "cdino imports (an unsupported variant?)")
    return out


def _resnet(state: dict[str, torch.Tensor], path: Path, model_args: dict,
            cfg_path: Path) -> tuple[EncoderConfig, dict]:
    """Sizes and renamed tensors of a basic-block ResNet with TSTP pooling."""
    if "layer1.0.conv3.weight" in state:
        raise ModelFormatError(f"{path}: a bottleneck ResNet (ResNet50 and deeper); cdino imports "
                               "basic-block ResNets (ResNet18, ResNet34)")
    if any(k.startswith(("seg_2.", "seg_bn_1.")) for k in state) or model_args.get("two_emb_layer"):
        raise ModelFormatError(f"{path}: a ResNet with two embedding layers (two_emb_layer); "
                               "cdino imports one")
    if any(k.startswith("pool.") for k in state) or model_args.get("pooling_func", "TSTP") != "TSTP":
        raise ModelFormatError(f"{path}: a ResNet with learned pooling; cdino imports TSTP pooling")
    channels = int(state["conv1.weight"].shape[0])
    blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    embed_dim, pooled = (int(n) for n in state["seg_1.weight"].shape)
    # seg_1 sees [mean; std] of 8·channels maps × the frequency bins left after 3 stride-2 stages
    n_mels = model_args.get("feat_dim", 8 * (pooled // (16 * channels)))
    freq = n_mels if isinstance(n_mels, int) else 0
    for _ in range(3):
        freq = (freq + 1) // 2
    if pooled != 16 * channels * freq:
        where = f"{cfg_path}: model_args.feat_dim" if "feat_dim" in model_args else f"{path}: feat_dim"
        raise ModelFormatError(f"{where} {n_mels!r} does not fit seg_1.weight ({pooled} inputs; "
                               f"{16 * channels * freq} expected)")
    cfg = EncoderConfig(name="resnet_wespeaker", channels=channels, blocks=blocks,
                        embed_dim=embed_dim, n_mels=n_mels)
    renamed = _rename(state, RESNET_NAMES, path)
    # cdino's ResNet convolves (time, frequency) maps, WeSpeaker's (frequency, time): transpose kernels
    return cfg, {k: (src, v.transpose(-1, -2) if v.dim() == 4 else v) for k, (src, v) in renamed.items()}


def _ecapa(state: dict[str, torch.Tensor], path: Path, name: str, model_args: dict,
           cfg_path: Path) -> tuple[EncoderConfig, dict]:
    """Sizes and renamed tensors of an ECAPA-TDNN with ASTP pooling."""
    if model_args.get("pooling_func", "ASTP") != "ASTP" or "pool.linear1.weight" not in state:
        raise ModelFormatError(f"{path}: an ECAPA-TDNN without ASTP pooling; cdino imports ASTP")
    channels, n_mels = (int(n) for n in state["layer1.conv.weight"].shape[:2])
    aggregation = int(state["conv.weight"].shape[0])
    attention = state["pool.linear1.weight"]
    global_context = attention.shape[1] == 3 * aggregation
    if name != "ECAPA_TDNN" and ("GLOB" in name) != global_context:
        raise ModelFormatError(f"{path}: pool.linear1.weight {tuple(attention.shape)} does not fit "
                               f"model {name} in {cfg_path.name}")
    for key, value in (("feat_dim", n_mels), ("channels", channels), ("global_context_att", global_context)):
        _check_arg(model_args, key, value, cfg_path)
    embed_bn = "bn2.weight" in state
    _check_arg(model_args, "emb_bn", embed_bn, cfg_path)
    cfg = EncoderConfig(name="ecapa_tdnn_wespeaker", channels=channels, n_mels=n_mels,
                        aggregation_channels=aggregation, global_context=global_context,
                        embed_dim=int(state["linear.weight"].shape[0]), embed_bn=embed_bn)
    renamed = _rename({k: v for k, v in state.items() if k != "pool.linear1.weight"}, ECAPA_NAMES, path)
    # the first attention layer sees [x; mean; std]: cdino keeps the x part as a 1x1 conv
    # and the [mean; std] part as a linear map (same function, see AttentiveStatsPool)
    renamed["pool.frame_proj.weight"] = ("pool.linear1.weight", attention[:, :aggregation])
    if global_context:
        renamed["pool.context_proj.weight"] = ("pool.linear1.weight", attention[:, aggregation:, 0])
    return cfg, renamed


def _load(cfg: EncoderConfig, renamed: dict[str, tuple[str, torch.Tensor]], path: Path) -> nn.Module:
    """Build the encoder and load the renamed tensors (as fp32), checking names and shapes."""
    try:
        cfg.validate()
        encoder = build_encoder(cfg)
    except (ConfigError, ValueError) as exc:
        raise ModelFormatError(f"{path}: sizes read from the tensors are not a cdino encoder ({exc})") from None
    own = encoder.state_dict()
    for key, (src, value) in renamed.items():
        if key not in own:
            raise ModelFormatError(f"{path}: tensor '{src}' belongs to no part of the architecture "
                                   "cdino imports (an unsupported variant?)")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ModelFormatError(f"{path}: tensor '{src}' has shape {tuple(value.shape)}; the "
                                   f"architecture read from the others needs {tuple(own[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelFormatError(f"{path}: tensor '{src}' holds NaN or infinite values")
    missing = [k for k in own if k not in renamed]
    if missing:
        raise ModelFormatError(f"{path}: {len(missing)} tensors missing for a WeSpeaker "
                               f"{'ResNet' if cfg.name.startswith('resnet') else 'ECAPA-TDNN'} "
                               f"(first: cdino's '{missing[0]}')")
    weights = {k: v.float() if v.is_floating_point() else v for k, (_, v) in renamed.items()}
    encoder.load_state_dict(weights, strict=True)
    return encoder.eval()
