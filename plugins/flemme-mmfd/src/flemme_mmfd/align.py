"""Bringing branches to a common width and grid, and each branch's own input normalisation.

Everything is channels-first and dimension-generic (2D and 3D).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flemme_core import layers


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a channels-first map (per position)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class MLPAlign(nn.Module):
    """MMFD's channel alignment: LayerNorm -> Linear(c, 2c) -> GELU -> Linear(2c, width), per position."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, 2 * in_channels), nn.GELU(),
                                 nn.Linear(2 * in_channels, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.movedim(1, -1)).movedim(-1, 1)


def channel_align(kind: str, dims: int, in_channels: int, width: int) -> nn.Module:
    """``mlp`` (LayerNorm -> MLP) or ``conv`` (1×1 convolution) from ``in_channels`` to ``width``."""
    if kind == "mlp":
        return MLPAlign(in_channels, width)
    return layers.conv(dims, in_channels, width, kernel_size=1)


def resample(x: torch.Tensor, size: Sequence[int], mode: str = "auto") -> torch.Tensor:
    """Resize a channels-first map to ``size``.

    ``auto`` averages over areas when shrinking on every axis (no aliasing from skipped
    positions) and interpolates (bi/trilinear) otherwise.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    dims = x.dim() - 2
    if mode == "auto":
        mode = "area" if all(t <= s for t, s in zip(size, x.shape[2:])) else "linear"
    if mode == "area":
        pool = F.adaptive_avg_pool2d if dims == 2 else F.adaptive_avg_pool3d
        return pool(x, size)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear" if dims == 2 else "trilinear", align_corners=False)


class InputAdapter(nn.Module):
    """A branch's own view of the image: normalisation, channel count and size.

    ``normalize``: ``none``; ``zscore`` (per image and channel); ``minmax`` (per image and
    channel, to [0, 1]); or fixed ``{mean, std}`` per channel, as a foundation model expects.
    A 1-channel image is repeated to the branch's ``in_channels`` (grey -> RGB).
    """

    def __init__(self, normalize: str | Mapping[str, Any], in_channels: int, branch_channels: int,
                 input_size: Sequence[int] | None):
        super().__init__()
        self.mode = normalize if isinstance(normalize, str) else "fixed"
        self.repeat = branch_channels if in_channels == 1 and branch_channels > 1 else 1
        self.input_size = list(input_size) if input_size else None
        if self.mode == "fixed":
            assert isinstance(normalize, Mapping)
            mean = torch.as_tensor(normalize["mean"], dtype=torch.float32).flatten()
            std = torch.as_tensor(normalize["std"], dtype=torch.float32).flatten()
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.repeat_interleave(self.repeat, dim=1)
        if self.input_size is not None:
            x = resample(x, self.input_size, "linear")
        axes = tuple(range(2, x.dim()))
        if self.mode == "zscore":
            x = (x - x.mean(axes, keepdim=True)) / (x.std(axes, keepdim=True) + 1e-6)
        elif self.mode == "minmax":
            lo, hi = x.amin(axes, keepdim=True), x.amax(axes, keepdim=True)
            x = (x - lo) / (hi - lo + 1e-6)
        elif self.mode == "fixed":
            shape = [1, -1] + [1] * (x.dim() - 2)
            x = (x - self.mean.view(shape)) / self.std.view(shape)
        return x
