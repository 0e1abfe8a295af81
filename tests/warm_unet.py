"""``warm_unet``: the core's ``unet`` started from every weight of another flemme checkpoint
(``arch_options.init``) -- the smallest architecture that reads another cell's model, for
the tests of study rows that need other rows' cells (``${cells.ROW.checkpoint}``)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flemme_core.architectures.base import BuildEncoder
from flemme_core.architectures.encoder_decoder import UNet, UNetOptions
from flemme_core.config import ModelConfig
from flemme_core.weights import load_into, read_safetensors


@dataclasses.dataclass
class WarmOptions(UNetOptions):
    init: str | None = None  # a flemme checkpoint of the same unet: all its weights are loaded


class WarmUNet(UNet):
    Options: ClassVar[type] = WarmOptions

    def __init__(self, config: ModelConfig, build_encoder: BuildEncoder):
        super().__init__(config, build_encoder)
        if self.options.init:
            tensors, _ = read_safetensors(self.options.init)
            load_into(self, tensors, f"warm_unet <- {self.options.init}")
