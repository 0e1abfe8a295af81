"""The ``pidinet`` block family: the decoder blocks an architecture builds on a PiDiNet encoder.

A decoder stage is a sequence of PiDiNet residual blocks (depthwise pixel-difference conv ->
ReLU -> 1×1 conv, plus the input), cycling through the configuration's ops, each optionally
followed by the context injection; down-sampling is PiDiNet's max-pool with a 1×1
projection, up-sampling a transposed convolution. 2D only. Like the published network the
blocks have no normalisation, ReLU, no dropout: other ``norm``/``act``/``dropout``/
``drop_path`` values are refused rather than ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from flemme_core import layers
from flemme_core.encoder import BlockFamily, ContextInjection, ContextSequential
from flemme_core.errors import ConfigError

from .network import PDCBlock
from .options import PiDiNetOptions, decoder_ops


class DecoderBlock(nn.Module):
    """A PiDiNet residual block, then [context injection]."""

    def __init__(self, op: str, in_channels: int, out_channels: int, context_dim: int | None):
        super().__init__()
        self.block = PDCBlock(op, in_channels, out_channels)
        self.context = ContextInjection(context_dim, out_channels) if context_dim else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.block(x)
        return x if self.context is None else self.context(x, context)


class PiDiNetFamily(BlockFamily):
    """Blocks of PiDiNet for decoders (the encoder itself keeps the official layout)."""

    name = "pidinet"
    Options = PiDiNetOptions
    defaults: ClassVar[dict[str, Any]] = {"patch_size": 1, "norm": "none", "act": "relu"}

    def __init__(self, cfg):
        super().__init__(cfg)
        fixed = {"norm": (cfg.norm, (None, "none")), "act": (cfg.act, (None, "relu")),
                 "dropout": (cfg.dropout, (0.0,)), "drop_path": (cfg.drop_path, (0.0,))}
        for key, (value, allowed) in fixed.items():
            if value not in allowed:
                raise ConfigError(f"model.encoder.{key}: {value} is not pidinet's; the published network (and its "
                                  f"decoder blocks) has no normalisation, ReLU, no dropout or drop-path: remove it")

    def stem(self, in_channels: int, out_channels: int, patch_size: int) -> nn.Module | None:
        return None

    def stage(self, in_channels: int, out_channels: int, num_blocks: int,
              drop_path: Sequence[float] = ()) -> nn.Module:
        ops = decoder_ops(self.options.pdcs)
        return ContextSequential(*[
            DecoderBlock(ops[i % len(ops)], in_channels if i == 0 else out_channels, out_channels,
                         self.cfg.context_dim)
            for i in range(num_blocks)])

    def down(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return nn.Sequential(nn.MaxPool2d(factor), nn.Conv2d(in_channels, out_channels, kernel_size=1))

    def up(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return layers.conv_transpose(2, in_channels, out_channels, factor)
