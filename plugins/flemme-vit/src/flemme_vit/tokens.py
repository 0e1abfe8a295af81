"""What the two transformer families share: options, token layout, patch embedding,
merging and expansion, and the stage that wraps a list of token blocks.

Layout: every module takes and returns channels-first tensors ``(B, C, *S)`` (the
encoder contract), but works on channels-last tokens ``(B, *S, C)`` inside. The
channels-first result is returned as a *view* of channels-last memory
(``movedim(-1, 1)``), so the next module's ``movedim(1, -1)`` is free and a whole
encoder/decoder pays for no layout copies; ``torch.cat`` of two such views along the
channel axis (the decoder's skip concatenation) keeps channels-last memory too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock
from torch import nn

from flemme_core import layers
from flemme_core.config import choice
from flemme_core.encoder import BlockFamily
from flemme_core.errors import ConfigError

TOKEN_NORMS = ("layer", "none")


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S) -> (B, *S, C)``; free when ``x`` came from :func:`to_channels_first`."""
    return x.movedim(1, -1)


def to_channels_first(t: torch.Tensor) -> torch.Tensor:
    """``(B, *S, C) -> (B, C, *S)`` as a view (memory stays channels-last)."""
    return t.movedim(-1, 1)


def pad_to_multiple(t: torch.Tensor, multiple: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes of channels-last tokens at their end to multiples of ``multiple``."""
    spatial = t.shape[1:-1]
    pads = [(-s) % m for s, m in zip(spatial, multiple)]
    if not any(pads):
        return t
    flat: list[int] = [0, 0]  # channel axis
    for p in reversed(pads):
        flat += [0, p]
    return F.pad(t, flat)


def token_norm(name: str, channels: int) -> nn.Module:
    """LayerNorm over the channel axis of channels-last tokens (or nothing)."""
    return nn.LayerNorm(channels) if name == "layer" else nn.Identity()


@dataclasses.dataclass
class TokenOptions:
    """Options common to ``vit`` and ``swin`` (common fields live in EncoderConfig)."""

    heads: Any = None           # heads per level (list) or for every level (int); None: width // head_dim
    head_dim: int = 16          # channels per head when ``heads`` is not given
    mlp_ratio: float = 4.0      # MLP hidden width / block width
    qkv_bias: bool = True
    attn_dropout: float = 0.0   # dropout on attention weights (training only)
    pos_embed: bool = False     # learned absolute position grid after the stem, interpolated to the input size

    def validate(self) -> None:
        if self.head_dim < 1:
            raise ConfigError(f"model.encoder.head_dim must be a positive integer, got {self.head_dim}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"model.encoder.mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"model.encoder.attn_dropout must be in [0, 1), got {self.attn_dropout}")
        heads = self.heads
        if heads is None:
            return
        values = heads if isinstance(heads, (list, tuple)) else [heads]
        if not values or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in values):
            raise ConfigError(f"model.encoder.heads must be a positive integer or one per level, got {heads!r}")


class PatchStem(nn.Module):
    """Patch embedding: non-overlapping ``patch``-sized conv, norm, optional learned position grid.

    The position grid is learned at the configured image size and interpolated
    (bilinear / trilinear) when the input differs, so one model serves other sizes.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, patch: int, norm: str,
                 grid: Sequence[int] | None):
        super().__init__()
        self.proj = layers.conv(dims, in_channels, out_channels, kernel_size=patch, stride=patch)
        self.norm = token_norm(norm, out_channels)
        self.patch = patch
        self.pos: nn.Parameter | None = None
        if grid is not None:
            self.pos = nn.Parameter(torch.zeros(1, out_channels, *[max(1, g) for g in grid]))
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.mode = "bilinear" if dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [(-s) % self.patch for s in x.shape[2:]]
        if any(pads):
            x = F.pad(x, [v for p in reversed(pads) for v in (0, p)])
        t = self.norm(to_tokens(self.proj(x)))
        if self.pos is not None:
            pos = self.pos
            if tuple(pos.shape[2:]) != tuple(t.shape[1:-1]):
                pos = F.interpolate(pos, size=t.shape[1:-1], mode=self.mode, align_corners=False)
            t = t + to_tokens(pos)
        return to_channels_first(t)


class PatchMerging(nn.Module):
    """Down-sampling: each ``factor``^dims neighbourhood -> concatenated channels -> Linear -> norm."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, factor: int, norm: str):
        super().__init__()
        self.dims, self.factor = dims, factor
        self.reduction = nn.Linear(factor ** dims * in_channels, out_channels, bias=False)
        self.norm = token_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, d = self.factor, self.dims
        t = pad_to_multiple(to_tokens(x), [f] * d)
        b, *size, c = t.shape
        split = [b]
        for s in size:
            split += [s // f, f]
        t = t.reshape(*split, c)
        perm = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
        t = t.permute(perm).reshape(b, *[s // f for s in size], f ** d * c)
        return to_channels_first(self.norm(self.reduction(t)))


class PatchExpansion(nn.Module):
    """Up-sampling: Linear to ``factor``^dims × out channels, pixel shuffle, norm."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, factor: int, norm: str):
        super().__init__()
        self.dims, self.factor, self.out_channels = dims, factor, out_channels
        self.expand = nn.Linear(in_channels, factor ** dims * out_channels, bias=False)
        self.norm = token_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, d = self.factor, self.dims
        t = to_tokens(x)
        b, *size, _ = t.shape
        t = self.expand(t).reshape(b, *size, *[f] * d, self.out_channels)
        perm = [0] + [v for i in range(d) for v in (1 + i, 1 + d + i)] + [1 + 2 * d]
        t = t.permute(perm).reshape(b, *[s * f for s in size], self.out_channels)
        return to_channels_first(self.norm(t))


class TokenStage(nn.Module):
    """Optional Linear in->out (decoder stages after a skip concatenation), then token blocks.

    ``forward(x, context=None)`` on channels-first ``x``; every block gets the context.
    """

    def __init__(self, in_channels: int, out_channels: int, blocks: Sequence[nn.Module]):
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


class TokenFamily(BlockFamily):
    """Shared builders of the token families; subclasses provide :meth:`block`."""

    Options: ClassVar[type] = TokenOptions
    defaults: ClassVar[dict[str, Any]] = {"channels": [32, 64, 128, 256], "num_blocks": 2, "patch_size": 2,
                                          "norm": "layer", "act": "gelu"}

    def __init__(self, cfg):
        super().__init__(cfg)
        choice(cfg.norm, TOKEN_NORMS, f"model.encoder.norm ({self.name} tokens are normalised over channels)")
        layers.act(cfg.act)  # unknown activation -> ConfigError with close matches
        self.level_heads = self._resolve_heads(list(cfg.channels))

    def _resolve_heads(self, channels: list[int]) -> list[int]:
        heads = self.options.heads
        if heads is None:
            out = []
            for level, width in enumerate(channels):
                if width % self.options.head_dim:
                    raise ConfigError(
                        f"model.encoder: width {width} at level {level} is not a multiple of head_dim "
                        f"{self.options.head_dim}; set head_dim to a divisor of every width or give heads per level")
                out.append(width // self.options.head_dim)
            return out
        if isinstance(heads, int):
            heads = [heads] * len(channels)
        if len(heads) != len(channels):
            raise ConfigError(f"model.encoder.heads has {len(heads)} values but channels has {len(channels)} "
                              f"levels; give one number or one per level")
        for level, (h, width) in enumerate(zip(heads, channels)):
            if width % h:
                near = sorted({max(d for d in range(1, min(h, width) + 1) if width % d == 0),
                               min((d for d in range(h, width + 1) if width % d == 0), default=width)})
                raise ConfigError(f"model.encoder.heads: {h} heads do not divide width {width} at level {level}; "
                                  f"use a divisor of {width} (e.g. {' or '.join(map(str, near))})")
        return list(heads)

    def heads_for(self, width: int) -> int:
        """Heads of the level with this width; for other widths (fusion, pyramids) width // head_dim."""
        if width in self.cfg.channels:
            return self.level_heads[list(self.cfg.channels).index(width)]
        h = max(1, width // self.options.head_dim)
        while width % h:
            h -= 1
        return h

    def block(self, width: int, heads: int, drop_path: float, index: int) -> nn.Module:
        """One token block ``forward(tokens, context=None)`` on channels-last tokens."""
        raise NotImplementedError

    def position_grid(self, patch_size: int) -> list[int] | None:
        if not self.options.pos_embed:
            return None
        return [max(1, s // patch_size) for s in self.cfg.image_size]

    def stem(self, in_channels: int, out_channels: int, patch_size: int) -> nn.Module:
        return PatchStem(self.dims, in_channels, out_channels, patch_size, self.cfg.norm,
                         self.position_grid(patch_size))

    def stage(self, in_channels: int, out_channels: int, num_blocks: int,
              drop_path: Sequence[float] = ()) -> nn.Module:
        rates = list(drop_path) or [0.0] * num_blocks
        heads = self.heads_for(out_channels)
        return TokenStage(in_channels, out_channels,
                          [self.block(out_channels, heads, rates[i], i) for i in range(num_blocks)])

    def down(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return PatchMerging(self.dims, in_channels, out_channels, factor, self.cfg.norm)

    def up(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return PatchExpansion(self.dims, in_channels, out_channels, factor, self.cfg.norm)


class GeluLinear(torch.autograd.Function):
    """``linear(gelu(h))`` that saves only ``h``: GELU is recomputed in backward.

    Autograd would keep both ``h`` (for GELU) and ``gelu(h)`` (for the Linear): 8 × width
    floats per token at mlp_ratio 4, the largest activation of a transformer block. This
    keeps 4 × width for one extra elementwise GELU in backward (~17% less saved memory
    for a Swin U-Net training step).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight = ctx.saved_tensors
        a = F.gelu(h)
        grad2 = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad2.t() @ a.reshape(-1, a.shape[-1])
        grad_bias = grad2.sum(0) if ctx.has_bias else None
        grad_h = torch.ops.aten.gelu_backward(grad @ weight, h)
        return grad_h, grad_weight, grad_bias


def _autocast_enabled(device_type: str) -> bool:
    """Under autocast the plain path runs (GeluLinear's backward assumes one dtype)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


class TokenMLP(MLPBlock):
    """MONAI's MLPBlock; with exact GELU and no dropout between the Linears it runs the
    memory-saving :class:`GeluLinear` (same numbers, same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = (isinstance(self.fn, nn.GELU) and self.fn.approximate == "none"
                 and (self.drop1.p == 0 or not self.training) and torch.is_grad_enabled()
                 and not _autocast_enabled(x.device.type))
        if not fused:
            return super().forward(x)
        return self.drop2(GeluLinear.apply(self.linear1(x), self.linear2.weight, self.linear2.bias))


def mlp(width: int, ratio: float, dropout: float, act: str) -> nn.Module:
    """MONAI's MLPBlock (Linear-act-dropout-Linear-dropout) with flemme's activation names."""
    block = TokenMLP(width, max(1, int(width * ratio)), dropout, act="GELU", dropout_mode="vit")
    block.fn = layers.act(act)
    return block
