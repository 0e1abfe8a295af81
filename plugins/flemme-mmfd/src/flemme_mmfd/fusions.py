"""The simple fusion strategies: ``sum``, ``concat`` (+ projection) and ``gated``.

Each factory follows the ``register_fusions`` contract: ``factory(channels, num_branches,
dims, **options) -> module`` and ``module(features) -> feature`` where every feature is
``(B, channels, *spatial)`` on one grid. A strategy may instead set ``native_grids = True``
and accept ``module(features, size=grid)`` with each branch on its own grid (MMFD's
``share_token`` does, to attend before resizing); the fusion encoder honours both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flemme_core import layers
from flemme_core.errors import ConfigError, ShapeError


def check_features(features: Sequence[torch.Tensor], num_branches: int, channels: int) -> None:
    """One-line errors for the wrong number of branches or widths (a plugin bug or misuse)."""
    if len(features) != num_branches:
        raise ShapeError(f"fusion built for {num_branches} branches got {len(features)} features")
    for i, f in enumerate(features):
        if f.shape[1] != channels:
            raise ShapeError(f"fusion branch {i} has {f.shape[1]} channels, expected {channels}; "
                             f"align channels before fusing")


class SumFusion(nn.Module):
    """Σ_b f_b (optionally the mean): the parameter-free baseline."""

    def __init__(self, channels: int, num_branches: int, mean: bool = False):
        super().__init__()
        self.channels, self.num_branches, self.mean = channels, num_branches, mean

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_features(features, self.num_branches, self.channels)
        out = torch.stack(list(features), 0).sum(0)
        return out / len(features) if self.mean else out


class ConcatFusion(nn.Module):
    """Concatenate along channels, then a 1×1 convolution back to ``channels``."""

    def __init__(self, channels: int, num_branches: int, dims: int):
        super().__init__()
        self.channels, self.num_branches = channels, num_branches
        self.proj = layers.conv(dims, channels * num_branches, channels, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_features(features, self.num_branches, self.channels)
        return self.proj(torch.cat(list(features), dim=1))


class GatedFusion(nn.Module):
    """Σ_b softmax_b(w)_c · f_b: learned per-branch (and per-channel) weights, equal at start."""

    def __init__(self, channels: int, num_branches: int, per_channel: bool = True):
        super().__init__()
        self.channels, self.num_branches = channels, num_branches
        self.logits = nn.Parameter(torch.zeros(num_branches, channels if per_channel else 1))

    def weights(self) -> torch.Tensor:
        return self.logits.softmax(dim=0)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_features(features, self.num_branches, self.channels)
        w = self.weights()
        shape = [-1] + [1] * (features[0].dim() - 2)
        return sum(w[b].view(shape) * f for b, f in enumerate(features))  # type: ignore[return-value]


def _no_options(name: str, options: dict) -> None:
    if options:
        raise ConfigError(f"fusion {name!r} has no options {sorted(options)}; remove them from fusion_options")


def sum_fusion(channels: int, num_branches: int, dims: int, mean: bool = False, **options) -> nn.Module:
    _no_options("sum", options)
    return SumFusion(channels, num_branches, mean=bool(mean))


def concat_fusion(channels: int, num_branches: int, dims: int, **options) -> nn.Module:
    _no_options("concat", options)
    return ConcatFusion(channels, num_branches, dims)


def gated_fusion(channels: int, num_branches: int, dims: int, per_channel: bool = True, **options) -> nn.Module:
    _no_options("gated", options)
    return GatedFusion(channels, num_branches, per_channel=bool(per_channel))
