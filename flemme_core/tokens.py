"""Channels-last token plumbing shared by every token family (ViT, Swin, Mamba, yours).

The encoder contract speaks channels-first ``(B, C, *S)``; attention and selective
scans want channels-last tokens ``(B, *S, C)``. Every module here takes and returns
channels-first tensors but works on tokens inside, and returns its result as a *view*
of channels-last memory (``movedim(-1, 1)``), so the next module's ``movedim(1, -1)``
is free and a whole encoder/decoder pays for no layout copies; ``torch.cat`` of two
such views on the channel axis (the decoder's skip concatenation) stays channels-last.

:class:`TokenFamily` is the one block family of every token family: patch stem, stages
of token blocks, patch merging down and patch expansion up. A family subclasses it and
writes only :meth:`TokenFamily.block` (its mixer and block); ``vit``, ``swin`` and
``mamba`` do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock
from torch import nn

from . import layers
from .config import EncoderConfig, choice
from .encoder import BlockFamily


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S) -> (B, *S, C)``; free when ``x`` came from :func:`to_channels_first`."""
    return x.movedim(1, -1)


def to_channels_first(t: torch.Tensor) -> torch.Tensor:
    """``(B, *S, C) -> (B, C, *S)`` as a view (memory stays channels-last)."""
    return t.movedim(-1, 1)


def pad_to_multiple(t: torch.Tensor, multiple: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes of channels-last tokens at their end to multiples of ``multiple``."""
    pads = [(-s) % m for s, m in zip(t.shape[1:-1], multiple)]
    if not any(pads):
        return t
    flat: list[int] = [0, 0]  # the channel axis
    for p in reversed(pads):
        flat += [0, p]
    return F.pad(t, flat)


class ChannelsFirstNorm(nn.Module):
    """A channels-first norm (batch, instance, group) applied to channels-last tokens."""

    def __init__(self, name: str, dims: int, channels: int):
        super().__init__()
        self.norm = layers.norm(name, dims, channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return to_tokens(self.norm(to_channels_first(t)))


def token_norm(name: str, channels: int, dims: int | None = None) -> nn.Module:
    """A norm over channels-last tokens: LayerNorm over channels for 'layer', nothing for
    'none', otherwise flemme's channels-first norm of that name (batch, instance, group),
    which needs the spatial ``dims``."""
    if name == "layer":
        return nn.LayerNorm(channels)
    if name == "none":
        return nn.Identity()
    if dims is None:
        raise ValueError(f"token_norm({name!r}) is a channels-first norm and needs the spatial dims")
    return ChannelsFirstNorm(name, dims, channels)


class PatchStem(nn.Module):
    """Patch embedding: non-overlapping ``patch``-sized conv, norm, optional learned position grid.

    Inputs that are not a multiple of the patch are zero-padded at their end. The position
    grid is learned at the configured image size and interpolated (bilinear / trilinear)
    when the input differs, so one model serves other sizes.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, patch: int, norm: str,
                 grid: Sequence[int] | None = None):
        super().__init__()
        self.proj = layers.conv(dims, in_channels, out_channels, kernel_size=patch, stride=patch)
        self.norm = token_norm(norm, out_channels, dims)
        self.patch = patch
        self.pos: nn.Parameter | None = None
        if grid is not None:
            self.pos = nn.Parameter(torch.zeros(1, out_channels, *[max(1, g) for g in grid]))
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.mode = "bilinear" if dims == 2 else "trilinear"

    resize_always = False  # set by export_mode: the traced graph interpolates at every size

    @contextlib.contextmanager
    def export_mode(self, fmt: str) -> Iterator[None]:
        """flemme_core.export's hook: trace the position-grid interpolation even at the grid's
        own size (where it is the identity), so the exported graph serves every input size."""
        self.resize_always = self.pos is not None
        try:
            yield None
        finally:
            self.resize_always = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [(-s) % self.patch for s in x.shape[2:]]
        if any(pads):
            x = F.pad(x, [v for p in reversed(pads) for v in (0, p)])
        t = self.norm(to_tokens(self.proj(x)))
        if self.pos is not None:
            pos = self.pos
            if self.resize_always or tuple(pos.shape[2:]) != tuple(t.shape[1:-1]):
                pos = F.interpolate(pos, size=t.shape[1:-1], mode=self.mode, align_corners=False)
            t = t + to_tokens(pos)
        return to_channels_first(t)


class PatchMerging(nn.Module):
    """Down-sampling (Swin): each ``factor``^dims neighbourhood -> concatenated channels -> Linear -> norm."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, factor: int, norm: str):
        super().__init__()
        self.dims, self.factor = dims, factor
        self.reduction = nn.Linear(factor ** dims * in_channels, out_channels, bias=False)
        self.norm = token_norm(norm, out_channels, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, d = self.factor, self.dims
        t = pad_to_multiple(to_tokens(x), [f] * d)
        b, *size, c = t.shape
        split = [b] + [v for s in size for v in (s // f, f)] + [c]
        perm = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
        t = t.reshape(split).permute(perm).reshape(b, *[s // f for s in size], f ** d * c)
        return to_channels_first(self.norm(self.reduction(t)))


class PatchExpansion(nn.Module):
    """Up-sampling (Swin-Unet): Linear to ``factor``^dims × out channels, pixel shuffle, norm."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, factor: int, norm: str):
        super().__init__()
        self.dims, self.factor, self.out_channels = dims, factor, out_channels
        self.expand = nn.Linear(in_channels, factor ** dims * out_channels, bias=False)
        self.norm = token_norm(norm, out_channels, dims)

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


class GeluLinear(torch.autograd.Function):
    """``linear(gelu(h))`` that saves only ``h``: GELU is recomputed in backward.

    Autograd would keep both ``h`` (for GELU) and ``gelu(h)`` (for the Linear): 8 × width
    floats per token at mlp_ratio 4, the largest activation of a token block. This keeps
    4 × width for one extra elementwise GELU in backward (~17% less saved memory for a
    Swin U-Net training step).
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


class TokenFamily(BlockFamily):
    """The builders of a token family; subclasses write :meth:`block` (and declare ``mixers``).

    * ``stem``: :class:`PatchStem` (``patch_size`` conv, norm, the position grid of
      :meth:`position_grid` if any);
    * ``stage``: an optional Linear in->out, then ``num_blocks`` of :meth:`block`;
    * ``down`` / ``up``: :class:`PatchMerging` / :class:`PatchExpansion`.

    ``norms`` limits ``norm`` to names that make sense for the family (transformers
    normalise over channels: ``("layer", "none")``); ``None`` accepts every flemme norm,
    applied to tokens by :func:`token_norm`. ``self.mixer`` is the resolved ``mixer`` key
    (``"identity"`` for the ablation when the family lists it in ``mixers``).
    """

    defaults: ClassVar[dict[str, Any]] = {"channels": [32, 64, 128, 256], "num_blocks": 2, "patch_size": 2,
                                          "norm": "layer", "act": "gelu"}
    norms: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        if self.norms is not None:
            choice(cfg.norm, self.norms, f"model.encoder.norm ({cfg.name} tokens are normalised over channels)")
        else:
            layers.norm(cfg.norm, cfg.dims, 8)  # unknown names -> ConfigError with close matches
        layers.act(cfg.act)

    @property
    def identity_mixer(self) -> bool:
        """Whether the blocks are built with the identity in place of their mixer."""
        return self.mixer == "identity"

    def block(self, width: int, drop_path: float, index: int) -> nn.Module:
        """Block ``index`` of a stage: ``forward(tokens, context=None)`` on channels-last tokens
        ``(B, *S, width)``, returning the same shape; injects the context if ``self.context_dim``."""
        raise NotImplementedError

    def position_grid(self, patch_size: int) -> list[int] | None:
        """Size of a learned position grid added after the stem, or None (no positions)."""
        return None

    def stem(self, in_channels: int, out_channels: int, patch_size: int) -> nn.Module:
        return PatchStem(self.dims, in_channels, out_channels, patch_size, self.cfg.norm,
                         self.position_grid(patch_size))

    def stage(self, in_channels: int, out_channels: int, num_blocks: int,
              drop_path: Sequence[float] = ()) -> nn.Module:
        rates = list(drop_path) or [0.0] * num_blocks
        return TokenStage(in_channels, out_channels,
                          [self.block(out_channels, rates[i], i) for i in range(num_blocks)])

    def down(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return PatchMerging(self.dims, in_channels, out_channels, factor, self.cfg.norm)

    def up(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        return PatchExpansion(self.dims, in_channels, out_channels, factor, self.cfg.norm)
