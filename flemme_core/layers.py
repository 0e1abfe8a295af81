"""Dimension-generic layers built on MONAI's factories, shared by the core and families."""

from __future__ import annotations

from typing import Any

from monai.networks.layers import DropPath
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from .config import choice

NORMS = ("batch", "instance", "group", "layer", "none")

__all__ = ["NORMS", "DropPath", "act", "conv", "conv_transpose", "head", "norm"]  # DropPath: MONAI's stochastic depth


def conv(dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
         bias: bool = True, groups: int = 1) -> nn.Module:
    """A 'same'-padded convolution for 2D or 3D."""
    return Conv[Conv.CONV, dims](in_channels, out_channels, kernel_size, stride=stride,
                                 padding=max(0, (kernel_size - stride + 1) // 2),
                                 bias=bias, groups=groups)


def conv_transpose(dims: int, in_channels: int, out_channels: int, factor: int) -> nn.Module:
    return Conv[Conv.CONVTRANS, dims](in_channels, out_channels, factor, stride=factor)


def norm(name: str, dims: int, channels: int) -> nn.Module:
    """batch / instance / group / layer (over channels, channels-first) / none."""
    choice(name, NORMS, "normalisation")
    if name == "none":
        return nn.Identity()
    if name == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return get_norm_layer(("group", {"num_groups": groups}), spatial_dims=dims, channels=channels)
    if name == "layer":
        return nn.GroupNorm(1, channels)  # LayerNorm over channels and space, channels-first
    if name == "instance":
        return get_norm_layer(("instance", {"affine": True}), spatial_dims=dims, channels=channels)
    return get_norm_layer(name, spatial_dims=dims, channels=channels)


def act(name: str, **kwargs: Any) -> nn.Module:
    """An activation by MONAI name (relu, leakyrelu, gelu, silu/swish, prelu, ...)."""
    from monai.networks.layers.factories import Act

    if name.upper() not in Act.names and name.lower() != "silu":
        from .errors import ConfigError, unknown_name_message

        raise ConfigError(unknown_name_message("activation", name, [k.lower() for k in Act.names] + ["silu"]))
    if name.lower() == "silu":
        return nn.SiLU()
    return get_act_layer(name if not kwargs else (name, kwargs))


def head(dims: int, in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Module:
    """The projection to output channels that every architecture ends with (1×1 unless asked)."""
    return conv(dims, in_channels, out_channels, kernel_size=kernel_size)
