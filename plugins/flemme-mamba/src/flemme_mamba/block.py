"""The VMamba block: x + SS(norm(x)), then x + MLP(norm(x)), each with drop-path.

The mixer SS is Mamba's selective scan (:class:`~flemme_mamba.ssm.SelectiveScanND`),
Mamba-2's SSD (:class:`~flemme_mamba.ssd.SSDMixerND`) or, for `mixer: identity`, the same
projections and gate around no scan (:class:`~flemme_mamba.ssm.IdentityScanND`); the block is the same.

The context vector (diffusion time, class) is injected as ``x·(1 + W_g c) + W_b c`` into
the normalised input of the selective-scan branch of every block.
"""

from __future__ import annotations

import torch
from monai.networks.layers import DropPath
from torch import nn

from flemme_core.encoder import ContextInjection
from flemme_core.tokens import mlp, token_norm


class MambaBlock(nn.Module):
    """One residual selective-scan block plus MLP on channels-last tokens ``(B, *S, width)``."""

    def __init__(self, dims: int, width: int, mixer: nn.Module, *, mlp_ratio: float, norm: str, act: str,
                 dropout: float, drop_path: float, context_dim: int | None):
        super().__init__()
        self.norm1 = token_norm(norm, width, dims)
        self.ssm = mixer
        self.context = ContextInjection(context_dim, width, channel_axis=-1) if context_dim else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp: nn.Module | None = None
        if mlp_ratio > 0:
            self.norm2 = token_norm(norm, width, dims)
            self.mlp = mlp(width, mlp_ratio, dropout, act)

    def forward(self, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(t)
        if self.context is not None:
            h = self.context(h, context)
        t = t + self.drop_path(self.ssm(h))
        if self.mlp is not None:
            t = t + self.drop_path(self.mlp(self.norm2(t)))
        return t
