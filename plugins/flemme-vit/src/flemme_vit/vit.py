"""The ``vit`` family: pre-norm global multi-head self-attention blocks on every level.

Built on MONAI where it serves: the MLP is :class:`monai.networks.blocks.MLPBlock`,
stochastic depth MONAI's ``DropPath``; attention is our own SDPA module (see
:class:`GlobalAttention` for why not MONAI's ``SABlock``).
Global attention costs O(N²) in the number of tokens: for large images raise
``patch_size`` (4 gives 4096 tokens at level 0 for 256²).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn

from flemme_core.encoder import ContextInjection, staged_encoder
from flemme_core.tokens import mlp, token_norm

from .tokens import TokenOptions, TransformerFamily


@dataclasses.dataclass
class ViTOptions(TokenOptions):
    pos_embed: bool = True  # global attention is permutation-invariant: give it positions


class GlobalAttention(nn.Module):
    """Multi-head self-attention over all tokens through ``F.scaled_dot_product_attention``.

    Same parameters as MONAI's ``SABlock`` (one qkv Linear, one output Linear), written
    here because SABlock needs einops (an optional MONAI dependency) for its head
    layout, materialises the N×N matrix unless ``use_flash_attention`` is set, and in
    that mode applies attention dropout in eval mode too.
    """

    def __init__(self, width: int, heads: int, qkv_bias: bool, attn_dropout: float, proj_dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.out_proj = nn.Linear(width, width)
        self.drop_output = nn.Dropout(proj_dropout)
        self.attn_dropout = attn_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.drop_output(self.out_proj(out.transpose(1, 2).reshape(b, n, c)))


class ViTBlock(nn.Module):
    """x + attn(norm(x)); x + mlp(inject(norm(x), context)), each branch with drop-path.

    With ``identity_mixer`` the attention is the identity (``x + norm(x)``), all else stays."""

    def __init__(self, width: int, heads: int, *, mlp_ratio: float, qkv_bias: bool, dropout: float,
                 attn_dropout: float, drop_path: float, norm: str, act: str, context_dim: int | None,
                 identity_mixer: bool = False):
        super().__init__()
        self.norm1 = token_norm(norm, width)
        self.attn = nn.Identity() if identity_mixer else GlobalAttention(width, heads, qkv_bias, attn_dropout, dropout)
        self.norm2 = token_norm(norm, width)
        self.mlp = mlp(width, mlp_ratio, dropout, act)
        self.context = ContextInjection(context_dim, width, channel_axis=-1) if context_dim else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        t = x.reshape(shape[0], -1, shape[-1])  # (B, N, C): every token attends to every token
        t = t + self.drop_path(self.attn(self.norm1(t)))
        h = self.norm2(t)
        if self.context is not None:
            h = self.context(h, context)
        t = t + self.drop_path(self.mlp(h))
        return t.reshape(shape)


class ViTFamily(TransformerFamily):
    """Hierarchical ViT: global attention on every level, patch merging between levels."""

    name = "vit"
    Options = ViTOptions
    # Global attention is quadratic in tokens: patch 4 keeps level 0 at 1024 tokens for 128² and
    # 4096 for 64³ (patch 2 would give 32768 tokens for 64³, minutes per forward on a CPU).
    defaults: ClassVar[dict[str, Any]] = {**TransformerFamily.defaults, "patch_size": 4}

    def block(self, width: int, drop_path: float, index: int) -> nn.Module:
        c, o = self.cfg, self.options
        return ViTBlock(width, self.heads_for(width), mlp_ratio=o.mlp_ratio, qkv_bias=o.qkv_bias,
                        dropout=c.dropout, attn_dropout=o.attn_dropout, drop_path=drop_path, norm=c.norm,
                        act=c.act, context_dim=c.context_dim, identity_mixer=self.identity_mixer)


encoder = staged_encoder(ViTFamily)
