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
from .base import Architecture, Batch, BuildEncoder
from .decoder import Decoder


@dataclasses.dataclass
class UNetOptions:
    decoder_blocks: int | None = None  # blocks per decoder stage (default: the encoder's)


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
        self.decoder = Decoder(encoder, skip=skip, num_blocks=self.options.decoder_blocks)
        self.head = layers.head(config.dims, self.decoder.out_channels, config.out_channels)

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
