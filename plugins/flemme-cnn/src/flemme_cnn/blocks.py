"""Convolutional blocks: each is conv-norm-act units with the context injected after the first."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers import DropPath
from torch import nn

from flemme_core import layers
from flemme_core.encoder import ContextInjection


def conv_unit(dims: int, in_channels: int, out_channels: int, kernel_size: int, norm: str, act: str,
              dropout: float, stride: int = 1) -> nn.Module:
    """conv -> norm -> dropout -> act (MONAI's Convolution with flemme's norm names)."""
    unit = Convolution(dims, in_channels, out_channels, strides=stride, kernel_size=kernel_size,
                       padding=max(0, (kernel_size - stride + 1) // 2),
                       act=None, norm=None, dropout=None, bias=norm == "none")
    return nn.Sequential(unit, layers.norm(norm, dims, out_channels),
                         nn.Dropout(dropout) if dropout else nn.Identity(), layers.act(act))


def deconv_unit(dims: int, in_channels: int, out_channels: int, factor: int, norm: str, act: str) -> nn.Module:
    """Transposed conv with kernel ``factor + 1`` -> norm -> act: neighbouring output voxels share inputs
    (a kernel equal to the stride gives each output block its own input voxel: blocky boundaries)."""
    unit = Convolution(dims, in_channels, out_channels, strides=factor, kernel_size=factor + 1, padding=1,
                       output_padding=1, is_transposed=True, act=None, norm=None, bias=norm == "none")
    return nn.Sequential(unit, layers.norm(norm, dims, out_channels), layers.act(act))


class ConvBlock(nn.Module):
    """``num_convs`` conv units; the context modulates the first one's output; optional residual."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, *, num_convs: int, residual: bool,
                 kernel_size: int, norm: str, act: str, dropout: float, drop_path: float,
                 context_dim: int | None):
        super().__init__()
        self.units = nn.ModuleList(
            conv_unit(dims, in_channels if i == 0 else out_channels, out_channels, kernel_size, norm, act, dropout)
            for i in range(num_convs))
        self.context = ContextInjection(context_dim, out_channels) if context_dim else None
        self.residual = residual
        if residual:
            self.shortcut = (nn.Identity() if in_channels == out_channels
                             else layers.conv(dims, in_channels, out_channels, kernel_size=1))
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        y = x
        for i, unit in enumerate(self.units):
            y = unit(y)
            if i == 0 and self.context is not None:
                y = self.context(y, context)
        if self.residual:
            y = self.shortcut(x) + self.drop_path(y)
        return y
