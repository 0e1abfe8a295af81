"""The ``swin`` family: shifted-window attention with relative position bias, 2D and 3D.

Built on MONAI's Swin pieces (``monai.networks.nets.swin_unetr``): ``WindowAttention``
(qkv, projection, relative position bias table and index, its forward; SDPA at
inference), ``window_partition`` to lay out the windows, ``MLPBlock`` and ``DropPath``.
Two things are ours:

* the attention mask also hides the zero padding added to fit windows to sizes not
  divisible by the window (MONAI's ``compute_mask`` masks only the shift regions, so
  real tokens attend to padding), and is built for regular windows too when padded;
* padding, cyclic shift and partition are one precomputed ``index_select`` (and one
  back) instead of MONAI's pad / roll / partition / reverse / roll / crop copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from monai.networks.layers import DropPath
from monai.networks.nets.swin_unetr import WindowAttention, window_partition
from torch import nn

from flemme_core.encoder import ContextInjection, staged_encoder
from flemme_core.errors import ConfigError
from flemme_core.tokens import mlp, token_norm

from .tokens import TokenOptions, TransformerFamily

MASKED = -100.0  # additive logit for blocked pairs (finite: a fully blocked padding row stays finite)


@dataclasses.dataclass
class SwinOptions(TokenOptions):
    window_size: Any = 0  # per axis (list) or every axis (int); 0: auto = 8 (2D) / 4 (3D), clamped per level
    shift: bool = True    # alternate regular and shifted windows within each stage

    def validate(self) -> None:
        super().validate()
        values = self.window_size if isinstance(self.window_size, (list, tuple)) else [self.window_size]
        if not values or any(not isinstance(w, int) or isinstance(w, bool) or w < 0 for w in values):
            raise ConfigError(f"model.encoder.window_size must be a positive integer or one per axis "
                              f"(0 = auto), got {self.window_size!r}")


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


class WindowLayout(NamedTuple):
    """Where each window slot reads its token from (``gather``, the zero row ``L`` for padding),
    where each token's result lies in the window layout (``scatter``), and the mask."""

    gather: torch.Tensor
    scatter: torch.Tensor
    mask: torch.Tensor | None
    num_windows: int
    padded: bool


@functools.lru_cache(maxsize=64)
def window_layout(size: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...],
                  device: str = "cpu") -> WindowLayout:
    """Padding, the cyclic shift and the window partition as one gather (and its inverse).

    One ``index_select`` replaces pad + roll + partition (and one more replaces reverse +
    roll + crop): forward+backward on CPU as fast at width 24 and about 2× faster from
    width 48-96 or with padding than the copy chain (benchmarks/bench_vit.py).
    """
    padded = [-(-s // w) * w for s, w in zip(size, window)]
    total = 1
    for s in size:
        total *= s
    source = torch.full(padded, total, dtype=torch.long)  # padding reads the zero row
    source[tuple(slice(0, s) for s in size)] = torch.arange(total).view(size)
    source = torch.roll(source, shifts=[-s for s in shift], dims=list(range(len(size))))
    gather = window_partition(source[None, ..., None], window).reshape(-1)
    real = gather < total
    scatter = torch.empty(total, dtype=torch.long)
    scatter[gather[real]] = torch.arange(gather.numel())[real]
    volume = 1
    for w in window:
        volume *= w
    num_windows = gather.numel() // volume
    return WindowLayout(gather.to(device), scatter.to(device), window_mask(size, window, shift, device),
                        num_windows, padded != list(size))


class SwinBlock(nn.Module):
    """x + W-MSA/SW-MSA(norm(x)); x + mlp(inject(norm(x), context)); channels-last tokens.

    With ``identity_mixer`` the window attention is the identity (``x + norm(x)``), all else stays."""

    def __init__(self, dims: int, width: int, heads: int, window: Sequence[int], shifted: bool, *,
                 mlp_ratio: float, qkv_bias: bool, dropout: float, attn_dropout: float, drop_path: float,
                 norm: str, act: str, context_dim: int | None, identity_mixer: bool = False):
        super().__init__()
        self.dims = dims
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in window) if shifted else (0,) * dims
        self.norm1 = token_norm(norm, width)
        self.attn: nn.Module = nn.Identity() if identity_mixer else WindowAttention(
            width, heads, self.window, qkv_bias=qkv_bias, attn_drop=attn_dropout, proj_drop=dropout,
            use_flash_attention=True)  # SDPA without autograd
        self.norm2 = token_norm(norm, width)
        self.mlp = mlp(width, mlp_ratio, dropout, act)
        self.context = ContextInjection(context_dim, width, channel_axis=-1) if context_dim else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    export_fixed_spatial = "swin precomputes its window layout (padding, shift, masks) per feature size"

    @contextlib.contextmanager
    def export_mode(self, fmt: str) -> Iterator[str | None]:
        """flemme_core.export's hook: explicit softmax attention instead of SDPA (same math);
        the ONNX exporter's decomposition of SDPA with a dynamic batch fails."""
        flash = getattr(self.attn, "use_flash_attention", False)
        if flash:
            self.attn.use_flash_attention = False
        for cached in (window_layout, window_mask):  # never keep layouts built from the tracer's fake tensors
            cached.cache_clear()
        try:
            yield "swin window attention: exported as explicit softmax attention (same math as SDPA)" if flash else None
        finally:
            if flash:
                self.attn.use_flash_attention = True
            for cached in (window_layout, window_mask):
                cached.cache_clear()

    def shift_for(self, size: Sequence[int]) -> tuple[int, ...]:
        """No shift along axes that one window already covers (shifting would only cut it)."""
        return tuple(0 if s <= w else sh for s, w, sh in zip(size, self.window, self.shift))

    def attend(self, h: torch.Tensor) -> torch.Tensor:
        """The attention branch on normalised channels-last tokens ``(B, *S, C)``."""
        if isinstance(self.attn, nn.Identity):  # mixer: identity: no windows to lay out
            return h
        b, *size, c = h.shape
        layout = window_layout(tuple(size), self.window, self.shift_for(size), str(h.device))
        t = h.reshape(b, -1, c)
        if layout.padded:
            t = torch.cat([t, t.new_zeros(b, 1, c)], dim=1)
        windows = t.index_select(1, layout.gather).view(b * layout.num_windows, -1, c)
        out = self.attn(windows, layout.mask)
        return out.view(b, -1, c).index_select(1, layout.scatter).view(h.shape)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attend(self.norm1(x)))
        h = self.norm2(x)
        if self.context is not None:
            h = self.context(h, context)
        return x + self.drop_path(self.mlp(h))


class SwinFamily(TransformerFamily):
    """Swin: windows of ``window_size`` tokens, odd blocks of a stage shifted by half a window."""

    name = "swin"
    Options = SwinOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.level_windows = self._resolve_windows()

    def _level_sizes(self) -> list[list[int]]:
        return [[max(1, s // (self.cfg.patch_size * 2 ** i)) for s in self.cfg.image_size]
                for i in range(len(self.cfg.channels))]

    def _resolve_windows(self) -> list[list[int]]:
        """One window per level: the configured one everywhere, or auto (0) = the cap clamped per level."""
        w = self.options.window_size
        levels = len(self.cfg.channels)
        if isinstance(w, (list, tuple)):
            if len(w) != self.dims or 0 in w:
                raise ConfigError(f"model.encoder.window_size has {len(w)} values for a {self.dims}D model; "
                                  f"give one positive number or {self.dims}")
            return [list(w)] * levels
        if w == 0:
            return [[min(self.auto_cap, s) for s in size] for size in self._level_sizes()]
        return [[w] * self.dims] * levels

    @property
    def auto_cap(self) -> int:
        """Auto window side: 8 in 2D, 4 in 3D (64 tokens per window either way)."""
        return 8 if self.dims == 2 else 4

    def window_for(self, width: int) -> list[int]:
        """The window of the level with this width; other widths (fusion, pyramids) the largest."""
        if width in self.cfg.channels:
            return self.level_windows[list(self.cfg.channels).index(width)]
        return max(self.level_windows, key=lambda w: sum(w))

    def check_feature_size(self, level: int, size: Sequence[int]) -> str | None:
        window = self.level_windows[level]
        if all(w <= s for w, s in zip(window, size)):
            return None
        fits = min(min(s) for s in self._level_sizes())
        need = max(window) * self.cfg.patch_size * 2 ** (len(self.cfg.channels) - 1)
        return (f"swin window {'×'.join(map(str, window))} is larger than the {'×'.join(map(str, size))} "
                f"feature map at level {level}: a window must fit every level; set encoder.window_size to at "
                f"most {fits} (or 0 for auto), use an image size of at least {need}, or use fewer levels")

    def block(self, width: int, drop_path: float, index: int) -> nn.Module:
        c, o = self.cfg, self.options
        return SwinBlock(self.dims, width, self.heads_for(width), self.window_for(width),
                         o.shift and index % 2 == 1, mlp_ratio=o.mlp_ratio, qkv_bias=o.qkv_bias,
                         dropout=c.dropout, attn_dropout=o.attn_dropout, drop_path=drop_path, norm=c.norm,
                         act=c.act, context_dim=c.context_dim, identity_mixer=self.identity_mixer)


encoder = staged_encoder(SwinFamily)
