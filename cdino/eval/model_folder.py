"""The model folder: what training exports and every user of a trained model reads.

A model folder (see ``docs/model_folder.md``) holds ``config.yaml`` (format version,
encoder and fbank settings, threshold and how it was set), ``encoder.safetensors``
(weights, loaded without executing code), ``mean.npy`` (training mean embedding) and,
optionally, ``calibration.json`` (cosine score -> LLR, :mod:`cdino.eval.calibration`).

This module writes and reads the folder and checks every file strictly (a bad one is a
:class:`~cdino.errors.ModelFormatError` naming it). Training (``cdino.train``), label-free
validation and the methods that start from a model use it directly;
:func:`cdino.api.load_model` wraps what it reads in the user's
:class:`~cdino.api.SpeakerModel`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from cdino import __version__
from cdino.atomic import file_mode, replacing_folder, save_npy, write_text
from cdino.config import from_dict, to_dict
from cdino.distributed import resolve_device
from cdino.errors import ConfigError, ModelFormatError
from cdino.eval.calibration import CALIBRATION_FILE, Calibration, calibration_text, read_calibration
from cdino.frontend.fbank import Fbank, FbankConfig
from cdino.models.registry import EncoderConfig, build_encoder

FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "encoder.safetensors"
MEAN_FILE = "mean.npy"

PathLike = str | os.PathLike


@dataclass
class ModelFolderConfig:
    """``config.yaml`` of a model folder."""

    format_version: int = FORMAT_VERSION  # layout version of the folder; this cdino reads 1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # the speaker encoder (resolved sizes)
    fbank: FbankConfig = field(default_factory=FbankConfig)  # feature settings the encoder was trained with
    threshold: float = 0.0  # cosine score at or above which two recordings are the same speaker
    threshold_source: str = ""  # how the threshold was set (never from test labels)
    embed_dim: int = 0  # size D of the embeddings
    info: dict[str, Any] = field(default_factory=dict)  # free notes: method, stage, created, cdino version


@dataclass
class ModelFolder:
    """A model folder as read by :func:`read_model_folder`: the encoder (eval mode, on
    ``device``) and everything beside it."""

    path: Path
    config: ModelFolderConfig
    encoder: nn.Module
    mean: np.ndarray  # float32 (D,)
    calibration: Calibration | None  # None: a folder without calibration.json
    device: torch.device

    @property
    def fbank(self) -> Fbank:
        """The fbank front end the encoder was trained with, on ``device``."""
        return Fbank(self.config.fbank).to(self.device).eval()


# ---------------------------------------------------------------------------
# writing


def _encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's weights as independent contiguous CPU tensors (safetensors refuses shared ones)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in encoder.state_dict().items()}


def save_model_folder(path: PathLike, encoder: nn.Module, encoder_cfg: EncoderConfig,
                      fbank_cfg: FbankConfig, mean: np.ndarray, threshold: float,
                      threshold_source: str, info: dict | None = None,
                      calibration: Calibration | None = None) -> Path:
    """Write a model folder atomically (a complete folder or none at ``path``); returns ``path``.
    ``calibration`` (optional) is written as ``calibration.json``."""
    from safetensors.torch import save_file

    path = Path(path)
    mean = np.asarray(mean, dtype=np.float32)
    embed_dim = int(getattr(encoder, "embed_dim", 0) or mean.shape[-1])
    if mean.shape != (embed_dim,) or not np.isfinite(mean).all():
        raise ValueError(f"mean must be a finite ({embed_dim},) vector, got shape {mean.shape}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")
    resolved = encoder_cfg.resolved() if hasattr(encoder_cfg, "resolved") else encoder_cfg
    notes = {"cdino_version": __version__,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    notes.update(info or {})
    config = ModelFolderConfig(format_version=FORMAT_VERSION, encoder=resolved, fbank=fbank_cfg,
                               threshold=float(threshold), threshold_source=str(threshold_source),
                               embed_dim=embed_dim, info=notes)

    with replacing_folder(path) as tmp:
        write_text(tmp / CONFIG_FILE, yaml.safe_dump(to_dict(config), sort_keys=False))
        save_file(_encoder_state(encoder), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / WEIGHTS_FILE).chmod(file_mode())  # readable by others, as the other files are
        save_npy(tmp / MEAN_FILE, mean)
        if calibration is not None:
            write_text(tmp / CALIBRATION_FILE, calibration_text(calibration.check(str(path / CALIBRATION_FILE))))
    return path


# ---------------------------------------------------------------------------
# reading


def read_model_config(path: PathLike) -> ModelFolderConfig:
    """Read and check a model folder's ``config.yaml`` (version first, then keys strictly)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: model folder not found")
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelFormatError(f"{cfg_path}: missing (not a cdino model folder?)")
    try:
        data = yaml.safe_load(cfg_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelFormatError(f"{cfg_path}: not readable YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{cfg_path}: expected a mapping at the top")
    version = data.get("format_version")
    if version is None:
        raise ModelFormatError(f"{cfg_path}: format_version missing (not a cdino model folder?)")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"{cfg_path}: format_version {version} is not supported "
                               f"(this cdino reads {FORMAT_VERSION})")
    return from_dict(ModelFolderConfig, data, where=str(cfg_path))


def read_model_info(path: PathLike) -> dict[str, Any]:
    """The free ``info`` notes of a model folder (steps, history, method ...), or ``{}``
    when the folder or its config cannot be read: notes are for reports, never required."""
    try:
        cfg = yaml.safe_load((Path(path) / CONFIG_FILE).read_text())
        return dict(cfg.get("info") or {})
    except Exception:
        return {}


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelFormatError(f"{path}: missing")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        reason = " ".join(str(exc).split())[:120]
        raise ModelFormatError(f"{path}: not a readable safetensors file ({reason})") from None


def _load_state(encoder: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first '{unexpected[0]}')")
        raise ModelFormatError(f"{path}: weights do not fit the encoder in config.yaml: "
                               + ", ".join(parts))
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelFormatError(f"{path}: weight '{k}' has shape {tuple(state[k].shape)}, "
                                   f"the encoder in config.yaml expects {tuple(v.shape)}")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise ModelFormatError(f"{path}: weight '{k}' holds NaN or infinite values")
    encoder.load_state_dict(state, strict=True)


def _load_mean(path: Path, embed_dim: int) -> np.ndarray:
    if not path.is_file():
        raise ModelFormatError(f"{path}: missing")
    try:
        mean = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable .npy array ({exc})") from None
    if mean.shape != (embed_dim,) or not np.isfinite(mean).all():
        raise ModelFormatError(f"{path}: expected a finite ({embed_dim},) vector, got shape {mean.shape}")
    return mean.astype(np.float32)


def read_model_folder(path: PathLike, device: str | torch.device = "cpu",
                      optimize: bool | str = False) -> ModelFolder:
    """Read and check a whole model folder (see :func:`cdino.api.load_model` for
    ``device`` and ``optimize``)."""
    device = resolve_device(device)
    folder = Path(path)
    config = read_model_config(folder)
    try:
        encoder = build_encoder(config.encoder)
    except ConfigError as exc:
        raise ConfigError(f"{folder / CONFIG_FILE}: encoder: {exc}") from None
    embed_dim = int(getattr(encoder, "embed_dim", config.embed_dim))
    if config.embed_dim != embed_dim:
        raise ModelFormatError(f"{folder / CONFIG_FILE}: embed_dim {config.embed_dim} does not match "
                               f"the encoder's {embed_dim}")
    weights = folder / WEIGHTS_FILE
    _load_state(encoder, _load_weights(weights), weights)
    mean = _load_mean(folder / MEAN_FILE, embed_dim)
    if not math.isfinite(config.threshold):
        raise ModelFormatError(f"{folder / CONFIG_FILE}: threshold must be a finite number")
    calibration = read_calibration(folder / CALIBRATION_FILE)  # None: an uncalibrated (older) folder
    encoder = encoder.to(device).eval()
    if optimize:
        from cdino.models.inference import optimize_for_inference

        encoder = optimize_for_inference(encoder, n_mels=config.encoder.n_mels,
                                         precision=optimize if isinstance(optimize, str) else "auto")
    return ModelFolder(folder, config, encoder, mean, calibration, device)


