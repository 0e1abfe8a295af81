"""A ConvNeXt-style block family: everything an encoder family must provide."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from flemme_core import layers
from flemme_core.encoder import BlockFamily, ContextInjection, ContextSequential, staged_encoder


@dataclasses.dataclass
class ConvNeXtOptions:
    kernel_size: int = 7
    mlp_ratio: float = 4.0


class ConvNeXtBlock(nn.Module):
    """depthwise conv -> norm -> (context) -> 1×1 expand -> GELU -> 1×1 project, residual."""

    def __init__(self, dims: int, channels: int, kernel_size: int, mlp_ratio: float, context_dim: int | None):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.dwconv = layers.conv(dims, channels, channels, kernel_size, groups=channels)
        self.norm = layers.norm("layer", dims, channels)
        self.context = ContextInjection(context_dim, channels) if context_dim else None
        self.mlp = nn.Sequential(layers.conv(dims, channels, hidden, 1), nn.GELU(),
                                 layers.conv(dims, hidden, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        y = self.norm(self.dwconv(x))
        if self.context is not None:
            y = self.context(y, context)
        return x + self.mlp(y)


class ConvNeXtFamily(BlockFamily):
    name = "convnext"
    Options = ConvNeXtOptions
    defaults: ClassVar[dict[str, Any]] = {"patch_size": 2, "num_blocks": 1, "norm": "layer", "act": "gelu"}

    def stem(self, in_channels: int, out_channels: int, patch_size: int) -> nn.Module:
        return nn.Sequential(layers.conv(self.dims, in_channels, out_channels, patch_size, stride=patch_size),
                             layers.norm("layer", self.dims, out_channels))

    def stage(self, in_channels: int, out_channels: int, num_blocks: int,
              drop_path: Sequence[float] = ()) -> nn.Module:
        blocks: list[nn.Module] = []
        if in_channels != out_channels:  # decoder stages after a skip concatenation
            blocks.append(_Project(self.dims, in_channels, out_channels))
        blocks += [ConvNeXtBlock(self.dims, out_channels, self.options.kernel_size, self.options.mlp_ratio,
                                 self.context_dim) for _ in range(num_blocks)]
        return ContextSequential(*blocks)

    def down(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return nn.Sequential(layers.norm("layer", self.dims, in_channels),
                             layers.conv(self.dims, in_channels, out_channels, factor, stride=factor))

    def up(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return layers.conv_transpose(self.dims, in_channels, out_channels, factor)


class _Project(nn.Module):
    def __init__(self, dims: int, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = layers.conv(dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(x)


encoder = staged_encoder(ConvNeXtFamily)
