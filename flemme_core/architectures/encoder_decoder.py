"""``unet`` (segmentation, with skips) and ``ae`` (reconstruction, without skips).

Both are encoder -> the shared :class:`Decoder` -> 1×1 head, differing in skips, task
and target; they read like the U-Net diagram and never name an encoder family.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from .. import layers
from ..config import ModelConfig
from ..errors import ConfigError
from .base import Architecture, Batch, BuildEncoder
from .decoder import Decoder


@dataclasses.dataclass
class UNetOptions:
    decoder_blocks: int | None = None  # blocks per decoder stage (default: the encoder's)
    head_width: int | None = None      # channels of the stem's patch expansion, the full-resolution level
                                       # before the 1×1 head. Default: max(first level's channels, classes):
                                       # 117 AAL classes read off 16 channels learnt ~10× slower (0.055 vs
                                       # 0.581 Dice at 400 steps); MONAI's UNet ends out_channels wide too
    head_kernel: int = 1               # kernel of the head conv; 3 reads each class off a neighbourhood (as
                                       # MONAI's UNet's last 3×3 unit): AAL at equal 355 steps 0.723 vs 0.518,
                                       # but at equal wall-clock 1×1 wins (its steps are cheaper): AAL 180 s
                                       # 0.770 vs 0.661, MNI152 3D 0.903 vs 0.885, stardist 0.941 both
                                       # (benchmarks/results/head-kernel-1seed-report.md)


@dataclasses.dataclass
class AEOptions:
    decoder_blocks: int | None = None
    supervised: bool = False  # target is batch['label'] (e.g. zero-filled MRI -> clean), not the input
    skip: bool = False        # U-shaped autoencoder


class EncoderDecoder(Architecture):
    """encoder -> decoder (skips optional) -> head, at input resolution."""

    Options: ClassVar[type] = UNetOptions
    skip: ClassVar[bool] = True

    def __init__(self, config: ModelConfig, build_encoder: BuildEncoder):
        super().__init__(config, build_encoder)
        encoder = self.encoder
        skip = getattr(self.options, "skip", self.skip)
        head_width = getattr(self.options, "head_width", None)
        k = getattr(self.options, "head_kernel", 1)
        patchified = encoder.feature_strides[0] > 1
        if head_width is None and patchified and hasattr(self.options, "head_width"):
            head_width = max(encoder.feature_channels[0], config.out_channels)
        if head_width is not None and not patchified:
            raise ConfigError("model.arch_options.head_width sets the width of the stem's patch expansion, but this "
                              "encoder's first level is at full resolution (patch_size 1); drop head_width")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ConfigError(f"model.arch_options.head_kernel must be an odd positive integer (1 or 3), got {k!r}")
        self.decoder = Decoder(encoder, skip=skip, num_blocks=self.options.decoder_blocks, out_width=head_width)
        self.head = layers.head(config.dims, self.decoder.out_channels, config.out_channels, kernel_size=k)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x, context), context)[-1])


class UNet(EncoderDecoder):
    """Segmentation: logits at input resolution (Flemme's SeM)."""

    task = "segmentation"


class AutoEncoder(EncoderDecoder):
    """Reconstruction (Flemme's AE); ``supervised: true`` learns input -> a different target."""

    task = "reconstruction"
    Options = AEOptions
    skip = False
    default_loss: ClassVar[list[dict[str, Any]]] = [{"name": "mse", "weight": 1.0}]

    def inputs_and_target(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["image"]
        return x, (batch["label"] if self.options.supervised else x)
