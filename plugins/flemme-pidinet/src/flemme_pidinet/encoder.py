"""The ``pidinet`` encoder family: PiDiNet (Su et al., ICCV 2021) under flemme's encoder contract.

The backbone is the official network's (``init_block``, stages ``block{s}_{j}`` of
residual pixel-difference blocks, max-pool down-sampling at the first block of stages 2+,
widths C, 2C, 4C, 4C at strides 1, 2, 4, 8) and so are the side outputs (``dilations``:
CDCM, ``attentions``: CSAM, ``conv_reduces`` + ``classifier``: the edge head), with the same
parameter names, so an official checkpoint loads key for key (:mod:`.weights`).

``features`` picks what the architectures see, fine to coarse:

* ``stages``: the four stage outputs (C, 2C, 4C, 4C; strides 1, 2, 4, 8);
* ``side``: each stage after CDCM and CSAM (the edge-aware side features);
* ``concat``: the side features resized to the coarsest grid and concatenated, one level
  (MMFD's PiDiNet branch: 4 × 24 = 96 channels at 1/8, i.e. [96, 64²] at 512²).

Parameters off the selected path (the edge head always; CDCM/CSAM with ``stages``) exist
only so the official checkpoint loads without unexpected keys; they are frozen.
2D only: pixel differences are defined on the 3×3 image neighbourhood.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flemme_core.config import EncoderConfig, parse_options
from flemme_core.encoder import Encoder, resolve_defaults
from flemme_core.errors import ConfigError, ShapeError
from flemme_core.weights import adapt_constants

from .family import PiDiNetFamily
from .network import CDCM, CSAM, MapReduce, PDCBlock, PDCConv
from .options import NORMALIZE, VARIANTS, PiDiNetOptions, layer_ops


class PiDiNetEncoder(Encoder):
    """See the module docstring."""

    supports_context = False  # the published layout has no place for a context injection

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.dims != 2:
            raise ConfigError(f"encoder 'pidinet' is 2D only (pixel differences on 3×3 image neighbourhoods), "
                              f"got dims {cfg.dims}; use a 2D image_size or a 3D family such as cnn")
        opts = parse_options(PiDiNetOptions, cfg.options, "model.encoder (pidinet options)")
        width = VARIANTS[opts.variant][0]
        widths = list(cfg.channels or [width, 2 * width, 4 * width, 4 * width])
        counts = cfg.num_blocks if cfg.num_blocks is not None else [3] + [4] * (len(widths) - 1)
        counts = [counts] * len(widths) if isinstance(counts, int) else list(counts)
        if len(counts) != len(widths):
            raise ConfigError(f"model.encoder.num_blocks has {len(counts)} values but channels has {len(widths)} "
                              f"stages; give one number or one per stage")
        cfg = resolve_defaults(PiDiNetFamily, dataclasses.replace(cfg, channels=widths, num_blocks=counts,
                                                                 patch_size=1))
        self.blocks = PiDiNetFamily(cfg)
        self.options, self.dims, self.in_channels = opts, 2, cfg.in_channels
        ops = layer_ops(opts.pdcs, 1 + sum(counts))
        self.layer_ops = ops
        self.stage_names: list[list[str]] = []

        self.init_block = PDCConv(ops[0], cfg.in_channels, widths[0], converted=opts.convert)
        layer = 1
        for s, (w, n) in enumerate(zip(widths, counts)):
            names = []
            for j in range(n):
                cin = widths[s - 1] if j == 0 and s > 0 else w
                name = f"block{s + 1}_{j + 1}"
                setattr(self, name, PDCBlock(ops[layer], cin, w, stride=2 if j == 0 and s > 0 else 1,
                                             converted=opts.convert))
                names.append(name)
                layer += 1
            self.stage_names.append(names)

        dil = opts.dil_width
        side = [dil or w for w in widths]
        if dil is not None:
            self.dilations = nn.ModuleList(CDCM(w, dil) for w in widths)
        if opts.sa:
            self.attentions = nn.ModuleList(CSAM(c) for c in side)
        self.conv_reduces = nn.ModuleList(MapReduce(c) for c in side)
        self.classifier = nn.Conv2d(len(widths), 1, kernel_size=1)
        nn.init.constant_(self.classifier.weight, 1.0 / len(widths))
        nn.init.zeros_(self.classifier.bias)

        norm = NORMALIZE[opts.normalize]
        if norm is not None:
            mean, std = (torch.tensor(adapt_constants(v, cfg.in_channels)) for v in norm)
            self.register_buffer("input_mean", mean.view(1, -1, 1, 1), persistent=False)
            self.register_buffer("input_std", std.view(1, -1, 1, 1), persistent=False)
        else:
            self.input_mean = self.input_std = None

        strides = [2 ** i for i in range(len(widths))]
        uses_side = opts.features != "stages"
        if opts.features == "concat":
            self.feature_channels, self.feature_strides = [sum(side)], [strides[-1]]
        else:
            self.feature_channels, self.feature_strides = (side if uses_side else widths), strides
        off_path = ["conv_reduces", "classifier"] + ([] if uses_side else ["dilations", "attentions"])
        for name, p in self.named_parameters():
            if name.split(".")[0] in off_path:
                p.requires_grad_(False)
        self.config = cfg
        self.given_weights = opts.weights
        self.backend = f"pidinet({opts.variant}, {opts.pdcs if isinstance(opts.pdcs, str) else 'custom'}" + \
            (", converted" if opts.convert else "") + f", features={opts.features})"
        if opts.weights:
            from .weights import load_official

            load_official(self, opts.weights)

    # -- forward -------------------------------------------------------------------
    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's stage outputs (C, 2C, 4C, 4C at strides 1, 2, 4, 8) of a normalised input."""
        x = self.init_block(x)
        out = []
        for names in self.stage_names:
            for name in names:
                x = getattr(self, name)(x)
            out.append(x)
        return out

    def side(self, stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each stage through CDCM then CSAM (whichever exist)."""
        out = []
        for i, x in enumerate(stages):
            if hasattr(self, "dilations"):
                x = self.dilations[i](x)
            if hasattr(self, "attentions"):
                x = self.attentions[i](x)
            out.append(x)
        return out

    def edges(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The official network's output: per-stage edge maps and their fusion (sigmoid), full size."""
        size = x.shape[2:]
        maps = [F.interpolate(reduce(f), size, mode="bilinear", align_corners=False)
                for reduce, f in zip(self.conv_reduces, self.side(self.stages(self.normalise(x))))]
        maps.append(self.classifier(torch.cat(maps, dim=1)))
        return [torch.sigmoid(m) for m in maps]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_mean is None else (x - self.input_mean) / self.input_std

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"pidinet expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        feats = self.stages(self.normalise(x))
        if self.options.features == "stages":
            return feats
        feats = self.side(feats)
        if self.options.features == "side":
            return feats
        grid = feats[-1].shape[2:]
        return [torch.cat([f if f.shape[2:] == grid else F.adaptive_avg_pool2d(f, grid) for f in feats], dim=1)]

    # -- contract extras -----------------------------------------------------------
    def standalone_config(self) -> dict[str, Any] | None:
        """The config without the weights file: a saved model holds the weights."""
        if not self.given_weights:
            return None
        cfg = self.config
        spec = {k: getattr(cfg, k) for k in EncoderConfig.USER_KEYS if getattr(cfg, k) is not None}
        return {**spec, "options": {k: v for k, v in cfg.options.items() if k != "weights"}}


def encoder(cfg: EncoderConfig) -> PiDiNetEncoder:
    """The factory registered as ``pidinet``."""
    return PiDiNetEncoder(cfg)


encoder.family = PiDiNetFamily  # type: ignore[attr-defined]
