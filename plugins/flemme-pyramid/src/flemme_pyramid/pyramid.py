"""Per-level refinement and heads, and the vertical fusion of their predictions.

Nothing here names an encoder family: the refinement block of each level is
``encoder.blocks.refine(channels)`` (a residual conv block for ``cnn``, a transformer or
selective-scan block for token families), so it also honours the encoder's
normalisation, activation and context settings, which the published code drops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flemme_core import layers
from flemme_core.config import choice
from flemme_core.encoder import BlockFamily

FUSIONS = ("concat", "sum")
RESIZES = ("linear", "nearest")
LEVEL_MAPS = ("full", "channel", "none")
FUSION_INITS = ("plain", "random")


def resize_prediction(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Bring a level's logits or image to ``size`` (bi/trilinear or nearest)."""
    if list(x.shape[2:]) == list(size):
        return x
    if mode == "linear":
        return F.interpolate(x, size=list(size), mode="bilinear" if x.dim() == 4 else "trilinear",
                             align_corners=False)
    return F.interpolate(x, size=list(size), mode="nearest")


class NoRefine(nn.Module):
    """Refinement switched off: the level feature goes straight to its head."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return x


class LevelHeads(nn.Module):
    """For each level: refine (same width, from the encoder's family), then a 1×1 head."""

    def __init__(self, blocks: BlockFamily, dims: int, channels: Sequence[int], out_channels: int,
                 refine: bool = True):
        super().__init__()
        self.refines = nn.ModuleList(blocks.refine(c) if refine else NoRefine() for c in channels)
        self.heads = nn.ModuleList(layers.head(dims, c, out_channels) for c in channels)

    def forward(self, levels: Sequence[torch.Tensor], context: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [head(refine(x, context)) for x, refine, head in zip(levels, self.refines, self.heads)]


class VerticalFusion(nn.Module):
    """Resize every prediction to full size, add a learnable per-input map, mix with 1×1.

    ``concat``: ``conv1x1(cat_i(p_i + m_i))`` (Flemme); ``sum``: ``conv1x1(Σ_i (p_i + m_i))``.
    ``level_map``: ``full`` (a map of the configured image size per input, Flemme's;
    resized when the input has another size), ``channel`` (one bias per channel and
    input: far fewer parameters in 3D) or ``none``. Maps start at zero.

    ``init``: ``plain`` (default) starts the mix as the identity on the normal output
    (``concat``) or the mean of the inputs (``sum``), so an untrained hierarchical model
    outputs what the plain one would, and the mix learns how much of each level to use
    (its weights get gradients from the first step; the level heads are trained by their
    own loss terms meanwhile). ``random``: PyTorch's default init, as Flemme does, which
    starts from a random mixture of a full-resolution output and blurry up-sampled levels.
    """

    def __init__(self, dims: int, channels: int, num_inputs: int, image_size: Sequence[int],
                 mode: str = "concat", level_map: str = "full", resize: str = "linear", init: str = "plain"):
        super().__init__()
        self.mode = choice(mode, FUSIONS, "model.arch_options.fusion")
        self.resize = choice(resize, RESIZES, "model.arch_options.resize")
        choice(level_map, LEVEL_MAPS, "model.arch_options.level_map")
        self.level_map = level_map
        if level_map == "none":
            self.maps = None
        else:
            shape = list(image_size) if level_map == "full" else [1] * dims
            self.maps = nn.Parameter(torch.zeros(num_inputs, channels, *shape))
        mix_in = channels * num_inputs if mode == "concat" else channels
        self.mix = layers.head(dims, mix_in, channels)
        self.num_inputs = num_inputs
        if choice(init, FUSION_INITS, "model.arch_options.fusion_init") == "plain":
            with torch.no_grad():
                eye = torch.eye(channels).view(channels, channels, *[1] * dims)
                self.mix.weight.zero_()
                self.mix.weight[:, :channels] = eye if mode == "concat" else eye / num_inputs
                self.mix.bias.zero_()

    resize_always = False  # set by export_mode

    @contextlib.contextmanager
    def export_mode(self, fmt: str) -> Iterator[None]:
        """flemme_core.export's hook: trace the full-size maps' resize even at their own size
        (the identity there), so the exported graph serves every input size."""
        self.resize_always = True
        try:
            yield None
        finally:
            self.resize_always = False

    def forward(self, predictions: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        maps = self.maps
        if maps is not None and self.level_map == "full" and (self.resize_always or list(maps.shape[2:]) != list(size)):
            maps = F.interpolate(maps, size=list(size), mode="bilinear" if maps.dim() == 4 else "trilinear",
                                 align_corners=False)
        ups = [resize_prediction(p, size, self.resize) for p in predictions]
        if maps is not None:
            ups = [p + maps[i:i + 1] for i, p in enumerate(ups)]
        fused = torch.cat(ups, dim=1) if self.mode == "concat" else torch.stack(ups, 0).sum(0)
        return self.mix(fused)
