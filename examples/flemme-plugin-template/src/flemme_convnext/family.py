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
    """The family's own keys (beside the common ones); unknown keys are refused with close matches."""

    kernel_size: int = 7
    mlp_ratio: float = 4.0

    def validate(self) -> None:
        # A ValueError here (or in __post_init__) becomes one `Error:` line naming the key.
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")


class ConvNeXtBlock(nn.Module):
    """depthwise conv -> norm -> (context) -> 1×1 expand -> act -> dropout -> 1×1 project, drop-path residual.

    Every common key is honoured (``flemme_core.testing.check_family`` checks it): the
    configured ``norm`` and ``act``, ``dropout`` inside the MLP, ``drop_path`` on the residual.
    """

    def __init__(self, family: ConvNeXtFamily, channels: int, drop_path: float):
        super().__init__()
        dims, cfg, opts = family.dims, family.cfg, family.options
        hidden = int(channels * opts.mlp_ratio)
        self.dwconv = layers.conv(dims, channels, channels, opts.kernel_size, groups=channels)
        self.norm = layers.norm(cfg.norm, dims, channels)
        self.context = ContextInjection(family.context_dim, channels) if family.context_dim else None
        self.mlp = nn.Sequential(layers.conv(dims, channels, hidden, 1), layers.act(cfg.act),
                                 nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity(),
                                 layers.conv(dims, hidden, channels, 1))
        self.drop_path = layers.DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        y = self.norm(self.dwconv(x))
        if self.context is not None:
            y = self.context(y, context)  # raises ShapeError when built with a context and called without
        return x + self.drop_path(self.mlp(y))


class ConvNeXtFamily(BlockFamily):
    name = "convnext"
    Options = ConvNeXtOptions
    defaults: ClassVar[dict[str, Any]] = {"patch_size": 2, "num_blocks": 1, "norm": "layer", "act": "gelu"}

    def stem(self, in_channels: int, out_channels: int, patch_size: int) -> nn.Module:
        return nn.Sequential(layers.conv(self.dims, in_channels, out_channels, patch_size, stride=patch_size),
                             layers.norm(self.cfg.norm, self.dims, out_channels))

    def stage(self, in_channels: int, out_channels: int, num_blocks: int,
              drop_path: Sequence[float] = ()) -> nn.Module:
        blocks: list[nn.Module] = []
        if in_channels != out_channels:  # decoder stages after a skip concatenation
            blocks.append(_Project(self.dims, in_channels, out_channels))
        rates = list(drop_path) or [0.0] * num_blocks
        blocks += [ConvNeXtBlock(self, out_channels, rates[i]) for i in range(num_blocks)]
        return ContextSequential(*blocks)

    def down(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return nn.Sequential(layers.norm(self.cfg.norm, self.dims, in_channels),
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
