"""Test helpers for flemme-mmfd: a 'probe' encoder with exact strides and widths, registered explicitly.

The probe stands for a foreign model (e.g. a ViT at stride 16 with 768 channels): each
level is average-pooling to its stride, a 1×1 convolution and a Linear over channels.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import flemme_core
from flemme_core.config import EncoderConfig, parse_options
from flemme_core.encoder import BlockFamily, Encoder

torch.set_num_threads(2)


@dataclasses.dataclass
class ProbeOptions:
    strides: list[int] = dataclasses.field(default_factory=lambda: [4])
    widths: list[int] = dataclasses.field(default_factory=lambda: [32])


class ProbeEncoder(Encoder):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        opts = parse_options(ProbeOptions, cfg.options, "probe")
        self.config, self.dims, self.in_channels = cfg, cfg.dims, cfg.in_channels
        self.blocks = BlockFamily(dataclasses.replace(cfg, options={}))
        self.feature_strides, self.feature_channels = list(opts.strides), list(opts.widths)
        conv = nn.Conv2d if cfg.dims == 2 else nn.Conv3d
        self.pools = [nn.AvgPool2d(s) if cfg.dims == 2 else nn.AvgPool3d(s) for s in opts.strides]
        self.convs = nn.ModuleList(conv(cfg.in_channels, w, 1) for w in opts.widths)
        self.linears = nn.ModuleList(nn.Linear(w, w) for w in opts.widths)

    def forward(self, x, context=None):
        return [lin(torch.nn.functional.gelu(conv(pool(x))).movedim(1, -1)).movedim(-1, 1)
                for pool, conv, lin in zip(self.pools, self.convs, self.linears)]


class ProbePlugin:
    """A third-party plugin: the probe encoder and a 'max' fusion strategy."""

    @flemme_core.hookimpl
    def register_encoders(self, register):
        register("probe", ProbeEncoder, "test encoder with exact strides and widths")

    @flemme_core.hookimpl
    def register_fusions(self, register):
        register("max", max_fusion, "element-wise maximum (third-party test strategy)")


class MaxFusion(nn.Module):
    def forward(self, features):
        return torch.stack(list(features)).amax(0)


def max_fusion(channels, num_branches, dims, **options):
    return MaxFusion()


def probe(stride: int, width: int, **extra) -> dict:
    """A branch config: one probe level at ``stride`` with ``width`` channels."""
    return {"name": "probe", "strides": [stride], "widths": [width], **extra}
