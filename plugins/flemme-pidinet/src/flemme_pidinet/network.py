"""PiDiNet's modules, with the attribute names of the official code so its checkpoints load
key for key (``init_block.weight``, ``block2_1.conv1.weight``, ``dilations.0.conv2_1.weight``,
``attentions.0.conv1.bias``, ``conv_reduces.0.conv.weight``, ``classifier.weight`` ...)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .pdc import kernel_size, pdc_conv2d, pdc_kernel


class PDCConv(nn.Module):
    """A pixel-difference convolution holding its 3×3 weights as ``weight`` (no bias).

    ``converted``: the weight *is* the equivalent plain kernel (5×5 for ``rd``), the form
    for inference; :meth:`convert_weight` turns PDC weights into it.
    """

    def __init__(self, op: str, in_channels: int, out_channels: int, groups: int = 1, converted: bool = False):
        super().__init__()
        self.op, self.groups, self.converted = op, groups, converted
        size = kernel_size(op) if converted else 3
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, size, size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def convert_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """PDC 3×3 weights -> this layer's stored form (unchanged unless ``converted``)."""
        return pdc_kernel(self.op, weight) if self.converted else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pdc_conv2d(x, self.weight, "cv" if self.converted else self.op, groups=self.groups)

    def extra_repr(self) -> str:
        return f"op={self.op}, weight={tuple(self.weight.shape)}, groups={self.groups}, converted={self.converted}"


class PDCBlock(nn.Module):
    """PiDiNet's residual block: [max-pool] -> depthwise PDC -> ReLU -> 1×1 conv, plus the input
    (through a 1×1 ``shortcut`` with bias when the block pools or changes width)."""

    def __init__(self, op: str, in_channels: int, out_channels: int, stride: int = 1, converted: bool = False):
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.pool = nn.MaxPool2d(kernel_size=stride, stride=stride)
        if stride > 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.conv1 = PDCConv(op, in_channels, in_channels, groups=in_channels, converted=converted)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = self.pool(x)
        y = self.conv2(self.relu2(self.conv1(x)))
        shortcut = getattr(self, "shortcut", None)
        return y + (shortcut(x) if shortcut is not None else x)


class CDCM(nn.Module):
    """Compact dilation convolution module: ReLU -> 1×1 -> sum of four 3×3 convs dilated 5, 7, 9, 11."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        nn.init.zeros_(self.conv1.bias)
        for i, rate in enumerate((5, 7, 9, 11), start=1):
            setattr(self, f"conv2_{i}", nn.Conv2d(out_channels, out_channels, 3, dilation=rate, padding=rate,
                                                   bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu1(x))
        return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)


class CSAM(nn.Module):
    """Compact spatial attention: x · sigmoid(conv3×3(conv1×1(ReLU(x)))) with 4 middle channels."""

    def __init__(self, channels: int, mid_channels: int = 4):
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, mid_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(mid_channels, 1, kernel_size=3, padding=1, bias=False)
        self.sigmoid = nn.Sigmoid()
        nn.init.zeros_(self.conv1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.conv2(self.conv1(self.relu1(x))))


class MapReduce(nn.Module):
    """1×1 convolution of a side feature to one edge-logit channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
