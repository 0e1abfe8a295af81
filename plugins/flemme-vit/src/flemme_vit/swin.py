"""The ``swin`` family: shifted-window attention with relative position bias, 2D and 3D.

Built on MONAI's Swin pieces (``monai.networks.nets.swin_unetr``): ``WindowAttention``
provides the parameters (qkv, projection, relative position bias table and index),
``window_partition`` / ``window_reverse`` cut and reassemble windows, ``MLPBlock`` and
``DropPath`` the rest. Two things are ours:

* the attention forward runs through ``F.scaled_dot_product_attention`` with the bias
  and mask as one additive term (MONAI uses it only without autograd);
* the attention mask also hides the zero padding added to fit windows to sizes not
  divisible by the window (MONAI's ``compute_mask`` masks only the shift regions, so
  real tokens attend to padding), and it is built for regular windows too when padded.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from monai.networks.nets.swin_unetr import WindowAttention as MonaiWindowAttention
from monai.networks.nets.swin_unetr import window_partition, window_reverse
from torch import nn

from flemme_core.encoder import ContextInjection, staged_encoder
from flemme_core.errors import ConfigError

from .tokens import TokenFamily, TokenOptions, mlp, pad_to_multiple, token_norm

MASKED = -100.0  # additive logit for blocked pairs (finite: a fully blocked padding row stays finite)


@dataclasses.dataclass
class SwinOptions(TokenOptions):
    window_size: Any = 0  # per axis (list) or every axis (int); 0: auto = min(8 in 2D / 4 in 3D, smallest level)
    shift: bool = True    # alternate regular and shifted windows within each stage

    def validate(self) -> None:
        super().validate()
        values = self.window_size if isinstance(self.window_size, (list, tuple)) else [self.window_size]
        if not values or any(not isinstance(w, int) or isinstance(w, bool) or w < 0 for w in values):
            raise ConfigError(f"model.encoder.window_size must be a positive integer or one per axis "
                              f"(0 = auto), got {self.window_size!r}")


class WindowAttention(MonaiWindowAttention):
    """MONAI's window attention, forward through SDPA with bias + mask (training too)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, h).permute(2, 0, 1)  # (heads, N, N)
        if mask is not None:  # (nW, N, N): windows of one image are consecutive in the batch
            nw = mask.shape[0]
            bias = bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)
            q, k, v = (t.reshape(b // nw, nw, h, n, c // h) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        out = out.reshape(b, h, n, c // h).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


@functools.lru_cache(maxsize=64)
def window_mask(size: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...],
                device: str = "cpu") -> torch.Tensor | None:
    """Additive mask ``(nW, N, N)`` for windows over a feature map of ``size``, or None.

    Works in the rolled frame (padded to multiples of ``window``, rolled by ``-shift``):
    along each shifted axis the last window mixes two strips that are not neighbours in
    the image (Swin's three regions ``[0, P-w) | [P-w, P-s) | [P-s, P)``); tokens attend
    only within their region, and never to padding.
    """
    padded = [-(-s // w) * w for s, w in zip(size, window)]
    if not any(shift) and list(size) == padded:
        return None
    label = torch.zeros(padded, dtype=torch.long)
    pad = torch.zeros(padded, dtype=torch.bool)
    for axis, (s, p, w, sh) in enumerate(zip(size, padded, window, shift)):
        q = torch.arange(p)
        region = (q >= p - w).long() + (q >= p - sh).long() if sh else torch.zeros(p, dtype=torch.long)
        view = [1] * len(size)
        view[axis] = p
        label = label + region.view(view) * 3 ** axis
        pad = pad | ((q + sh) % p >= s).view(view)
    labels = window_partition(label[None, ..., None].double(), window).squeeze(-1)  # (nW, N)
    pads = window_partition(pad[None, ..., None].double(), window).squeeze(-1) > 0
    blocked = (labels[:, :, None] != labels[:, None, :]) | pads[:, None, :]
    return torch.zeros(blocked.shape).masked_fill(blocked, MASKED).to(device)


class SwinBlock(nn.Module):
    """x + W-MSA/SW-MSA(norm(x)); x + mlp(inject(norm(x), context)); channels-last tokens."""

    def __init__(self, dims: int, width: int, heads: int, window: Sequence[int], shifted: bool, *,
                 mlp_ratio: float, qkv_bias: bool, dropout: float, attn_dropout: float, drop_path: float,
                 norm: str, act: str, context_dim: int | None):
        super().__init__()
        self.dims = dims
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in window) if shifted else (0,) * dims
        self.norm1 = token_norm(norm, width)
        self.attn = WindowAttention(width, heads, self.window, qkv_bias=qkv_bias, attn_drop=attn_dropout,
                                    proj_drop=dropout)
        self.norm2 = token_norm(norm, width)
        self.mlp = mlp(width, mlp_ratio, dropout, act)
        self.context = ContextInjection(context_dim, width, channel_axis=-1) if context_dim else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def shift_for(self, size: Sequence[int]) -> tuple[int, ...]:
        """No shift along axes that one window already covers (shifting would only cut it)."""
        return tuple(0 if s <= w else sh for s, w, sh in zip(size, self.window, self.shift))

    def attend(self, h: torch.Tensor) -> torch.Tensor:
        """The attention branch on normalised channels-last tokens ``(B, *S, C)``."""
        b, *size, c = h.shape
        shift = self.shift_for(size)
        axes = tuple(range(1, self.dims + 1))
        t = pad_to_multiple(h, self.window)
        padded = list(t.shape[1:-1])
        if any(shift):
            t = torch.roll(t, shifts=[-s for s in shift], dims=axes)
        mask = window_mask(tuple(size), self.window, shift, str(h.device))
        out = self.attn(window_partition(t, self.window), mask)
        t = window_reverse(out.reshape(-1, *self.window, c), self.window, [b, *padded])
        if any(shift):
            t = torch.roll(t, shifts=list(shift), dims=axes)
        if padded != size:
            t = t[(slice(None), *[slice(0, s) for s in size])]
        return t

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attend(self.norm1(x)))
        h = self.norm2(x)
        if self.context is not None:
            h = self.context(h, context)
        return x + self.drop_path(self.mlp(h))


class SwinFamily(TokenFamily):
    """Swin: windows of ``window_size`` tokens, odd blocks of a stage shifted by half a window."""

    name = "swin"
    Options = SwinOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.window = self._resolve_window()

    def _smallest_level(self) -> list[int]:
        stride = self.cfg.patch_size * 2 ** (len(self.cfg.channels) - 1)
        return [max(1, s // stride) for s in self.cfg.image_size]

    def _resolve_window(self) -> list[int]:
        w = self.options.window_size
        if isinstance(w, (list, tuple)):
            if len(w) != self.dims or 0 in w:
                raise ConfigError(f"model.encoder.window_size has {len(w)} values for a {self.dims}D model; "
                                  f"give one positive number or {self.dims}")
            return list(w)
        if w == 0:
            cap = 8 if self.dims == 2 else 4
            return [min(cap, s) for s in self._smallest_level()]
        return [w] * self.dims

    def check_feature_size(self, level: int, size: Sequence[int]) -> str | None:
        if all(w <= s for w, s in zip(self.window, size)):
            return None
        shown = "×".join(map(str, size))
        fits = min(self._smallest_level())
        stride = self.cfg.patch_size * 2 ** (len(self.cfg.channels) - 1)
        need = max(self.window) * stride
        return (f"swin window {'×'.join(map(str, self.window))} is larger than the {shown} feature map at "
                f"level {level}: a window must fit every level; set encoder.window_size to at most {fits} "
                f"(or 0 for auto), use an image size of at least {need}, or use fewer levels")

    def block(self, width: int, heads: int, drop_path: float, index: int) -> nn.Module:
        c, o = self.cfg, self.options
        return SwinBlock(self.dims, width, heads, self.window, o.shift and index % 2 == 1,
                         mlp_ratio=o.mlp_ratio, qkv_bias=o.qkv_bias, dropout=c.dropout,
                         attn_dropout=o.attn_dropout, drop_path=drop_path, norm=c.norm, act=c.act,
                         context_dim=c.context_dim)


encoder = staged_encoder(SwinFamily)
