"""MMFD's shared-token fuser (``share_token``), dimension-generic.

Per depth level ``d`` a learned token set ``T_d`` (``num_tokens × channels``) is shared
by all branches: each branch's positions are queries that cross-attend to ``T_d`` (keys
and values), with a residual and an MLP, so every branch reads from, and through
training writes into, one common memory. Afterwards each branch is resized to the
anchor grid, passed through its own MLP, the branches are summed and a
conv3×3 → GELU → conv3×3 → LayerNorm neck mixes space. Attention runs on each branch's
native grid (``native_grids = True``): a coarse branch costs few queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flemme_core import layers
from flemme_core.errors import ConfigError

from .align import ChannelLayerNorm, resample
from .fusions import check_features


class TokenCrossBlock(nn.Module):
    """x ← x + Attn(LN(x), LN(T), LN(T)); x ← x + MLP(LN(x)) on ``(B, N, C)`` sequences."""

    def __init__(self, channels: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(channels)
        self.norm_kv = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(channels)
        hidden = max(1, int(channels * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = x + self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class ShareTokenFusion(nn.Module):
    """See the module docstring; ``forward(features, size=None)`` (size defaults to branch 0's grid)."""

    native_grids = True

    def __init__(self, channels: int, num_branches: int, dims: int, depth: int = 2, num_tokens: int = 64,
                 heads: int = 8, mlp_ratio: float = 2.0, shared_blocks: bool = True, resample_mode: str = "auto"):
        super().__init__()
        if depth < 1 or num_tokens < 1:
            raise ConfigError(f"share_token needs depth >= 1 and num_tokens >= 1, got {depth}, {num_tokens}")
        heads = next(h for h in range(min(heads, channels), 0, -1) if channels % h == 0)
        self.channels, self.num_branches, self.dims = channels, num_branches, dims
        self.resample_mode = resample_mode
        self.tokens = nn.ParameterList(
            [nn.Parameter(torch.randn(num_tokens, channels) * 0.02) for _ in range(depth)])
        copies = 1 if shared_blocks else num_branches
        self.blocks = nn.ModuleList(
            nn.ModuleList(TokenCrossBlock(channels, heads, mlp_ratio) for _ in range(depth)) for _ in range(copies))
        self.branch_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels))
            for _ in range(num_branches))
        self.neck = nn.Sequential(layers.conv(dims, channels, channels, 3), nn.GELU(),
                                  layers.conv(dims, channels, channels, 3), ChannelLayerNorm(channels))

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int] | None = None) -> torch.Tensor:
        check_features(features, self.num_branches, self.channels)
        size = list(size) if size is not None else list(features[0].shape[2:])
        fused = None
        for b, feature in enumerate(features):
            grid = feature.shape[2:]
            x = feature.flatten(2).transpose(1, 2)  # (B, N, C): positions are queries
            for block, tokens in zip(self.blocks[b % len(self.blocks)], self.tokens):
                x = block(x, tokens)
            x = x.transpose(1, 2).reshape(feature.shape[0], self.channels, *grid)
            x = resample(x, size, self.resample_mode)
            x = self.branch_mlps[b](x.movedim(1, -1)).movedim(-1, 1)
            fused = x if fused is None else fused + x
        return self.neck(fused)


def share_token_fusion(channels: int, num_branches: int, dims: int, depth: int = 2, num_tokens: int = 64,
                       heads: int = 8, mlp_ratio: float = 2.0, shared_blocks: bool = True,
                       resample: str = "auto", **options) -> nn.Module:
    """Factory of the ``share_token`` strategy (MMFD's "d2t512" is ``depth: 2, num_tokens: 512``)."""
    if options:
        raise ConfigError(f"fusion 'share_token' has no options {sorted(options)}; valid: depth, num_tokens, "
                          f"heads, mlp_ratio, shared_blocks, resample")
    return ShareTokenFusion(channels, num_branches, dims, depth=int(depth), num_tokens=int(num_tokens),
                            heads=int(heads), mlp_ratio=float(mlp_ratio), shared_blocks=bool(shared_blocks),
                            resample_mode=resample)
