"""Encoder registry: one config class and one builder for every speaker encoder.

    cfg = EncoderConfig(name="ecapa_tdnn_small")
    encoder = build_encoder(cfg)      # nn.Module, (B, T, 80) fbank -> (B, encoder.embed_dim)
    print(describe(cfg))              # "ecapa_tdnn_small: C=64, MFA 192, 192-d, 0.24 M parameters"

Sizes left at 0 take the variant's default, so ``name`` alone picks a sensible model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from cdino.errors import ConfigError
from cdino.models.ecapa_tdnn import EcapaTdnn
from cdino.models.resnet import ResNet
from cdino.models.wespeaker import WeSpeakerEcapaTdnn, WeSpeakerResNet

#: Per-variant defaults for the sizes that are 0 ("the variant's default") in the config.
VARIANTS: dict[str, dict] = {
    "ecapa_tdnn": dict(channels=512, aggregation_channels=1536, embed_dim=192,
                       se_dim=128, attention_dim=128),
    "ecapa_tdnn_small": dict(channels=64, embed_dim=192,
                             se_dim=32, attention_dim=64),
    "resnet34": dict(channels=32, blocks=[3, 4, 6, 3], embed_dim=256),
    "resnet34_small": dict(channels=8, blocks=[2, 2, 2, 2], embed_dim=256),
    # WeSpeaker's architectures, for imported checkpoints (cdino.models.wespeaker)
    "ecapa_tdnn_wespeaker": dict(channels=512, aggregation_channels=1536, embed_dim=192,
                                 se_dim=128, attention_dim=128),
    "resnet_wespeaker": dict(channels=32, blocks=[3, 4, 6, 3], embed_dim=256),
}

#: Res2 scale of the ECAPA-TDNN variants (channels must be a multiple of it).
RES2_SCALE = 8


@dataclass
class EncoderConfig:
    """Which speaker encoder to build, and its sizes."""

    name: str = "ecapa_tdnn"
    """Encoder: ecapa_tdnn, ecapa_tdnn_small, resnet34, resnet34_small, or WeSpeaker's
    ecapa_tdnn_wespeaker / resnet_wespeaker (what ``cdino import wespeaker`` writes)."""
    channels: int = 0
    """Width: ECAPA channels C (512 or 1024) / ResNet base channels; 0 = the variant's
    default (ecapa_tdnn and ecapa_tdnn_wespeaker 512, ecapa_tdnn_small 64, resnet34 and
    resnet_wespeaker 32, resnet34_small 8)."""
    embed_dim: int = 0
    """Embedding size; 0 = the variant's default (192 for ECAPA-TDNN, 256 for ResNet)."""
    n_mels: int = 80
    """Mel bands of the input fbank."""
    embed_bn: bool = False
    """BatchNorm on the embedding (the public DINO recipe uses it)."""
    aggregation_channels: int = 0
    """ECAPA multi-layer feature aggregation width; 0 = 1536 for ecapa_tdnn and
    ecapa_tdnn_wespeaker (also with C=1024, as in the paper), 3·C for ecapa_tdnn_small."""
    global_context: bool = True
    """ECAPA attentive pooling also sees the utterance mean and std of each channel."""
    blocks: list[int] = field(default_factory=list)
    """ResNet basic blocks per stage (4 stages); empty = [3, 4, 6, 3] (resnet34,
    resnet_wespeaker), [2, 2, 2, 2] (resnet34_small)."""

    def validate(self) -> None:
        if self.name not in VARIANTS:
            raise ConfigError(f"name: unknown encoder {self.name!r} (known: {', '.join(VARIANTS)})")
        for key in ("channels", "embed_dim", "aggregation_channels"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0 (0 = the variant's default), got {getattr(self, key)}")
        if self.n_mels <= 0:
            raise ConfigError(f"n_mels: must be positive, got {self.n_mels}")
        is_ecapa = self.name.startswith("ecapa")
        if is_ecapa and self.channels % RES2_SCALE:
            raise ConfigError(f"channels: ECAPA-TDNN channels must be a multiple of {RES2_SCALE}, got {self.channels}")
        if self.blocks:
            if is_ecapa:
                raise ConfigError("blocks: only ResNet encoders have blocks per stage")
            if len(self.blocks) != 4 or min(self.blocks) < 1:
                raise ConfigError(f"blocks: expected 4 positive block counts, got {self.blocks}")
        if self.aggregation_channels and not is_ecapa:
            raise ConfigError("aggregation_channels: only ECAPA-TDNN encoders have an aggregation layer")
        if self.embed_bn and self.name == "resnet_wespeaker":
            raise ConfigError("embed_bn: WeSpeaker's ResNet has no BatchNorm on the embedding")

    def resolved(self) -> "EncoderConfig":
        """A copy with every 0 / empty size replaced by the variant's default."""
        self.validate()
        defaults = VARIANTS[self.name]
        out = dataclasses.replace(self, blocks=list(self.blocks))
        for key in ("channels", "embed_dim", "aggregation_channels", "blocks"):
            if key in defaults and not getattr(out, key):
                setattr(out, key, list(defaults[key]) if key == "blocks" else defaults[key])
        if out.name == "ecapa_tdnn_small" and not self.aggregation_channels:
            out.aggregation_channels = 3 * out.channels  # the small model scales with C
        return out


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """Build the encoder named by ``cfg``; the module has attribute ``embed_dim``."""
    r = cfg.resolved()
    if r.name.startswith("ecapa"):
        extra = VARIANTS[r.name]
        ecapa = WeSpeakerEcapaTdnn if r.name == "ecapa_tdnn_wespeaker" else EcapaTdnn
        return ecapa(n_mels=r.n_mels, channels=r.channels,
                     aggregation_channels=r.aggregation_channels, embed_dim=r.embed_dim,
                     embed_bn=r.embed_bn, res2_scale=RES2_SCALE, se_dim=extra["se_dim"],
                     attention_dim=extra["attention_dim"], global_context=r.global_context)
    if r.name == "resnet_wespeaker":
        return WeSpeakerResNet(n_mels=r.n_mels, base_channels=r.channels, blocks=r.blocks,
                               embed_dim=r.embed_dim)
    return ResNet(n_mels=r.n_mels, base_channels=r.channels, blocks=r.blocks,
                  embed_dim=r.embed_dim, embed_bn=r.embed_bn)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def describe(cfg: EncoderConfig) -> str:
    """One line naming the encoder, its sizes and parameter count in millions."""
    r = cfg.resolved()
    n = count_parameters(build_encoder(r))
    if r.name.startswith("ecapa"):
        sizes = f"C={r.channels}, MFA {r.aggregation_channels}"
    else:
        sizes = f"base {r.channels}, blocks {r.blocks}"
    bn = " + BN" if r.embed_bn else ""
    return f"{r.name}: {sizes}, {r.embed_dim}-d embedding{bn}, {n / 1e6:.2f} M parameters"
