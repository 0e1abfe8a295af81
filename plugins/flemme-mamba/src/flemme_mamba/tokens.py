"""Channels-last token plumbing of the mamba family: norms, patch embedding, merging, expansion.

Every module takes and returns channels-first tensors ``(B, C, *S)`` (the encoder
contract) and works on channels-last tokens ``(B, *S, C)`` inside. Channels-first
results are views of channels-last memory (``movedim``), so the next module's
``movedim(1, -1)`` costs nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from flemme_core import layers


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) -> (B, *S, C), free when x came from :func:`to_channels_first`."""
    return x.movedim(1, -1)


def to_channels_first(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(-1, 1)


class TokenNorm(nn.Module):
    """A norm over channels-last tokens: LayerNorm for 'layer', else flemme's channels-first norm."""

    def __init__(self, name: str, dims: int, channels: int):
        super().__init__()
        self.layer = name == "layer"
        self.norm = nn.LayerNorm(channels) if self.layer else layers.norm(name, dims, channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.layer or isinstance(self.norm, nn.Identity):
            return self.norm(t)
        return to_tokens(self.norm(to_channels_first(t)))


class PatchStem(nn.Module):
    """Patch embedding: a ``patch``-sized, ``patch``-strided conv, then the norm."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, patch: int, norm: str):
        super().__init__()
        self.proj = layers.conv(dims, in_channels, out_channels, kernel_size=patch, stride=patch)
        self.norm = TokenNorm(norm, dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_first(self.norm(to_tokens(self.proj(x))))


class PatchMerging(nn.Module):
    """Down-sampling: each ``factor``^dims neighbourhood -> concatenated channels -> Linear -> norm."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, factor: int, norm: str):
        super().__init__()
        self.dims, self.factor = dims, factor
        self.reduction = nn.Linear(factor ** dims * in_channels, out_channels, bias=False)
        self.norm = TokenNorm(norm, dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, d = self.factor, self.dims
        t = to_tokens(x)
        b, *size, c = t.shape
        split = [b] + [v for s in size for v in (s // f, f)] + [c]
        perm = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
        t = t.reshape(split).permute(perm).reshape(b, *[s // f for s in size], f ** d * c)
        return to_channels_first(self.norm(self.reduction(t)))


class PatchExpansion(nn.Module):
    """Up-sampling: Linear to ``factor``^dims × out channels, pixel shuffle, norm."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, factor: int, norm: str):
        super().__init__()
        self.dims, self.factor, self.out_channels = dims, factor, out_channels
        self.expand = nn.Linear(in_channels, factor ** dims * out_channels, bias=False)
        self.norm = TokenNorm(norm, dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, d = self.factor, self.dims
        t = to_tokens(x)
        b, *size, _ = t.shape
        t = self.expand(t).reshape(b, *size, *[f] * d, self.out_channels)
        perm = [0] + [v for i in range(d) for v in (1 + i, 1 + d + i)] + [1 + 2 * d]
        t = t.permute(perm).reshape(b, *[s * f for s in size], self.out_channels)
        return to_channels_first(self.norm(t))


class TokenStage(nn.Module):
    """Optional Linear in->out (decoder stages after a skip concatenation), then the blocks.

    ``forward(x, context=None)`` on channels-first ``x``; every block gets the context.
    """

    def __init__(self, in_channels: int, out_channels: int, blocks: list[nn.Module]):
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels) if in_channels != out_channels else None
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        t = to_tokens(x)
        if self.proj is not None:
            t = self.proj(t)
        for block in self.blocks:
            t = block(t, context)
        return to_channels_first(t)
