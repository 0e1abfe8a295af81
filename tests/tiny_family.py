"""``tiny``: the encoder family the core's own tests build, defined here so that the core's
tests need no plugin (``flemme-core`` alone must list, build, train and pass its tests).

It is a minimal but honest family: two conv-norm-act units per block with the context
injected after the first, a residual shortcut with drop-path, dropout, strided-conv down,
transposed-conv up, and every common key (``norm``, ``act``, ``dropout``, ``drop_path``,
``patch_size``) honoured — ``flemme_core.testing.check_family("tiny")`` passes.

Registered by ``tiny_plugin.py`` (import-cheap, as a plugin's entry module must be).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from flemme_core import layers
from flemme_core.encoder import BlockFamily, ContextInjection, ContextSequential, staged_encoder

NAME = "tiny"


@dataclasses.dataclass
class TinyOptions:
    kernel_size: int = 3

    def validate(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")


def unit(dims: int, cin: int, cout: int, norm: str, act: str, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    # no bias before a norm (it would get only rounding-noise gradients, which AdamW blows up)
    return nn.Sequential(layers.conv(dims, cin, cout, kernel, stride=stride, bias=norm == "none"),
                         layers.norm(norm, dims, cout), layers.act(act))


class TinyBlock(nn.Module):
    def __init__(self, family: TinyFamily, cin: int, cout: int, drop_path: float):
        super().__init__()
        c, k = family.cfg, family.options.kernel_size
        self.first = unit(c.dims, cin, cout, c.norm, c.act, k)
        self.context = ContextInjection(family.context_dim, cout) if family.context_dim else None
        self.second = unit(c.dims, cout, cout, c.norm, c.act, k)
        self.dropout = nn.Dropout(c.dropout) if c.dropout else nn.Identity()
        self.shortcut = nn.Identity() if cin == cout else layers.conv(c.dims, cin, cout, 1)
        self.drop_path = layers.DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        y = self.first(x)
        if self.context is not None:
            y = self.context(y, context)
        return self.shortcut(x) + self.drop_path(self.dropout(self.second(y)))


class TinyFamily(BlockFamily):
    name = NAME
    Options = TinyOptions
    defaults: ClassVar[dict[str, Any]] = {"patch_size": 1, "num_blocks": 1, "norm": "batch", "act": "relu",
                                          "channels": [32, 64, 128, 256]}

    def stem(self, in_channels: int, out_channels: int, patch_size: int) -> nn.Module | None:
        if patch_size == 1:
            return None
        return unit(self.dims, in_channels, out_channels, self.cfg.norm, self.cfg.act, patch_size, patch_size)

    def stage(self, in_channels: int, out_channels: int, num_blocks: int,
              drop_path: Sequence[float] = ()) -> nn.Module:
        rates = list(drop_path) or [0.0] * num_blocks
        return ContextSequential(*[TinyBlock(self, in_channels if i == 0 else out_channels, out_channels, rates[i])
                                   for i in range(num_blocks)])

    def down(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return unit(self.dims, in_channels, out_channels, self.cfg.norm, self.cfg.act, max(3, factor), factor)

    def up(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return layers.conv_transpose(self.dims, in_channels, out_channels, factor)


encoder = staged_encoder(TinyFamily)
