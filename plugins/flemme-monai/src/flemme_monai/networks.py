"""MONAI's segmentation networks as flemme architectures, built by MONAI itself.

Each class is a row of one table: which class of ``monai.networks.nets`` it builds, how
``model.arch_options`` map to that class's keyword arguments, and its total stride. The one
builder, :class:`MonaiNetwork`, reads the row and keeps the network as ``self.net``: nothing of MONAI's is
re-implemented, so a row in a comparison is the network users already trust (the tests load
``self.net``'s weights into a directly built MONAI network and compare outputs). They take no
encoder (registered with ``encoder=False``): the trainer, losses, data and evaluation are the
same as for every flemme model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from flemme_core.architectures.base import Architecture, BuildEncoder
from flemme_core.config import ModelConfig, _int_list
from flemme_core.errors import ConfigError, ShapeError


def _ints(value: Any, where: str, count: int | None = None) -> list[int]:
    out = _int_list(value, where)
    if count is not None and len(out) != count:
        raise ConfigError(f"{where} needs {count} values, got {len(out)} ({out})")
    return out


def _given(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments that are set: ``None`` leaves MONAI's own default in place."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _per_level(value: Any, levels: int, where: str) -> list[int]:
    """One int for every level, or one per level."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * levels
    return _ints(value, where, levels)


#: how one MONAI keyword gets its value: an option's name (passed as it is), or a function of
#: (options, model config)
Arg = str | Callable[[Any, ModelConfig], Any]


class MonaiNetwork(Architecture):
    """One ``monai.networks.nets`` class; subclasses are rows that say which and map the options."""

    task = "segmentation"
    #: class name in ``monai.networks.nets``
    network: ClassVar[str] = ""
    #: MONAI keyword -> its value, after ``spatial_dims``/``in_channels``/``out_channels``
    args: ClassVar[dict[str, Arg]] = {}
    #: MONAI keyword -> option passed only when set (``None`` leaves MONAI's own default)
    unless_none: ClassVar[dict[str, str]] = {}
    #: total stride when the network fixes it, and why; ``None``: the product of ``options.strides``
    fixed_stride: ClassVar[tuple[int, str] | None] = None
    #: whether a normalisation runs at the total stride (then one voxel there cannot train)
    norm_at_coarsest: ClassVar[bool] = True

    def __init__(self, config: ModelConfig, build_encoder: BuildEncoder | None):
        super().__init__(config, build_encoder)
        stride = self.total_stride()
        size = config.image_size
        if any(s % stride for s in size):
            fixed = [math.ceil(s / stride) * stride for s in size]
            raise ShapeError(f"image size {'×'.join(map(str, size))} must be divisible by {stride} for {config.arch} "
                             f"({self.stride_rule()}); pad to {'×'.join(map(str, fixed))} or use --image-size "
                             f"{','.join(map(str, fixed))}")
        if (self.norm_at_coarsest and math.prod(s // stride for s in size) == 1
                and getattr(self.options, "norm", None) in (None, "instance")):
            raise ShapeError(f"image size {'×'.join(map(str, size))} leaves one voxel at {config.arch}'s coarsest "
                             f"level (stride {stride}), which instance norm cannot normalise; use at least "
                             f"{2 * stride} along one axis")
        self.network_kwargs = self.kwargs()
        from monai.networks import nets

        try:
            self.net = getattr(nets, self.network)(**self.network_kwargs)
        except (ValueError, TypeError, KeyError, AssertionError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"model.arch_options ({config.arch}): monai.networks.nets.{self.network} refused "
                              f"{self.network_kwargs}: {first}") from None

    # -- the row, read -----------------------------------------------------------------
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the MONAI class (including dims and channels)."""
        o, c = self.options, self.config
        out: dict[str, Any] = {"spatial_dims": c.dims, "in_channels": c.in_channels, "out_channels": c.out_channels}
        out.update({key: getattr(o, arg) if isinstance(arg, str) else arg(o, c) for key, arg in self.args.items()})
        return out | _given(**{key: getattr(o, option) for key, option in self.unless_none.items()})

    def total_stride(self) -> int:
        return self.fixed_stride[0] if self.fixed_stride else math.prod(self.options.strides)

    def stride_rule(self) -> str:
        return self.fixed_stride[1] if self.fixed_stride else f"the product of its strides {self.options.strides}"

    # -- the architecture contract -----------------------------------------------------
    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ShapeError(f"{self.config.arch} takes no context vector (MONAI's {self.network} has no "
                             "conditioning input); use an encoder family in unet for conditioned models")
        return self.net(x)

    def summary_extra(self) -> dict[str, Any]:
        args = ", ".join(f"{k}={v}" for k, v in self.network_kwargs.items()
                         if k not in ("spatial_dims", "in_channels", "out_channels", "img_size"))
        return {"network": f"monai.networks.nets.{self.network}({args})", "total_stride": self.total_stride()}


# -- UNet ----------------------------------------------------------------------------------
@dataclasses.dataclass
class UNetOptions:
    channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] | None = None   # between levels; default 2 each
    num_res_units: int = 2
    kernel_size: int = 3
    up_kernel_size: int = 3
    norm: str | None = None   # None: MONAI's default (instance norm)
    act: str | None = None    # None: MONAI's default
    dropout: float = 0.0

    def validate(self) -> None:
        self.channels = _ints(self.channels, "model.arch_options.channels")
        if len(self.channels) < 2:
            raise ConfigError(f"model.arch_options.channels needs at least 2 levels, got {self.channels}")
        n = len(self.channels) - 1
        self.strides = _ints(self.strides, "model.arch_options.strides", n) if self.strides is not None else [2] * n


class MonaiUNet(MonaiNetwork):
    """``monai.networks.nets.UNet``: residual units, strided-conv down, transposed-conv up."""

    network = "UNet"
    Options = UNetOptions
    args: ClassVar[dict[str, Arg]] = {
        "channels": lambda o, c: tuple(o.channels), "strides": lambda o, c: tuple(o.strides),
        "kernel_size": "kernel_size", "up_kernel_size": "up_kernel_size", "num_res_units": "num_res_units",
        "dropout": "dropout"}
    unless_none: ClassVar[dict[str, str]] = {"norm": "norm", "act": "act"}


# -- BasicUNet -------------------------------------------------------------------------------
@dataclasses.dataclass
class BasicUNetOptions:
    features: list[int] = dataclasses.field(default_factory=lambda: [32, 32, 64, 128, 256, 32])
    norm: str | None = None   # None: MONAI's default (instance norm)
    act: str | None = None    # None: MONAI's default
    dropout: float = 0.0
    upsample: str = "deconv"   # deconv | pixelshuffle | nontrainable

    def validate(self) -> None:
        self.features = _ints(self.features, "model.arch_options.features", 6)


class MonaiBasicUNet(MonaiNetwork):
    """``monai.networks.nets.BasicUNet``: two convs per level, max-pool down, 5 levels (stride 16)."""

    network = "BasicUNet"
    Options = BasicUNetOptions
    args: ClassVar[dict[str, Arg]] = {
        "features": lambda o, c: tuple(o.features), "dropout": "dropout", "upsample": "upsample"}
    unless_none: ClassVar[dict[str, str]] = {"norm": "norm", "act": "act"}
    fixed_stride = (16, "BasicUNet pools 4 times")


# -- DynUNet ---------------------------------------------------------------------------------
@dataclasses.dataclass
class DynUNetOptions:
    filters: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256])
    strides: list[int] | None = None      # per level; default 1 then 2s (first level at full resolution)
    kernel_size: int | list[int] = 3      # per level
    res_block: bool = False
    norm: str | None = None   # None: MONAI's default (instance norm)
    act: str | None = None    # None: MONAI's default
    dropout: float = 0.0

    def validate(self) -> None:
        self.filters = _ints(self.filters, "model.arch_options.filters")
        n = len(self.filters)
        if n < 3:
            raise ConfigError(f"model.arch_options.filters needs at least 3 levels (DynUNet's rule), got {self.filters}")
        self.strides = ([1] + [2] * (n - 1) if self.strides is None
                        else _ints(self.strides, "model.arch_options.strides", n))
        self.kernel_size = _per_level(self.kernel_size, n, "model.arch_options.kernel_size")


class MonaiDynUNet(MonaiNetwork):
    """``monai.networks.nets.DynUNet`` (nnU-Net's network), without deep supervision."""

    network = "DynUNet"
    Options = DynUNetOptions
    args: ClassVar[dict[str, Arg]] = {
        "kernel_size": lambda o, c: list(o.kernel_size), "strides": lambda o, c: list(o.strides),
        "upsample_kernel_size": lambda o, c: list(o.strides[1:]), "filters": lambda o, c: list(o.filters),
        "dropout": lambda o, c: o.dropout or None, "res_block": "res_block"}
    unless_none: ClassVar[dict[str, str]] = {"norm_name": "norm", "act_name": "act"}


# -- UNETR -----------------------------------------------------------------------------------
@dataclasses.dataclass
class UNETROptions:
    hidden_size: int = 768
    num_heads: int = 12
    mlp_dim: int | None = None   # default 4 × hidden_size
    feature_size: int = 16
    norm: str | None = None   # None: MONAI's default (instance norm)
    res_block: bool = True
    dropout: float = 0.0
    qkv_bias: bool = False

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.arch_options.hidden_size {self.hidden_size} must be a multiple of num_heads "
                              f"{self.num_heads}; use {max(1, round(self.hidden_size / self.num_heads)) * self.num_heads}")
        self.mlp_dim = 4 * self.hidden_size if self.mlp_dim is None else self.mlp_dim


class MonaiUNETR(MonaiNetwork):
    """``monai.networks.nets.UNETR``: a ViT on 16^d patches with a convolutional decoder; its
    position embedding is sized for ``model.image_size`` (the training patch)."""

    network = "UNETR"
    Options = UNETROptions
    args: ClassVar[dict[str, Arg]] = {
        "img_size": lambda o, c: tuple(c.image_size), "feature_size": "feature_size", "hidden_size": "hidden_size",
        "mlp_dim": "mlp_dim", "num_heads": "num_heads", "res_block": "res_block", "dropout_rate": "dropout",
        "qkv_bias": "qkv_bias"}
    unless_none: ClassVar[dict[str, str]] = {"norm_name": "norm"}
    fixed_stride = (16, "UNETR's ViT patches are 16 voxels wide")
    norm_at_coarsest = False  # the ViT's tokens are projected up before any norm


# -- SwinUNETR -------------------------------------------------------------------------------
@dataclasses.dataclass
class SwinUNETROptions:
    feature_size: int = 24
    depths: list[int] = dataclasses.field(default_factory=lambda: [2, 2, 2, 2])
    num_heads: list[int] = dataclasses.field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    norm: str | None = None   # None: MONAI's default (instance norm)
    drop_path: float = 0.0
    use_v2: bool = False

    def validate(self) -> None:
        if self.feature_size % 12:
            raise ConfigError(f"model.arch_options.feature_size {self.feature_size} must be a multiple of 12 "
                              f"(SwinUNETR's rule); use {max(1, round(self.feature_size / 12)) * 12}")
        self.depths = _ints(self.depths, "model.arch_options.depths", 4)
        self.num_heads = _ints(self.num_heads, "model.arch_options.num_heads", 4)


class MonaiSwinUNETR(MonaiNetwork):
    """``monai.networks.nets.SwinUNETR``: a Swin transformer encoder (patch 2, 4 stages) with a
    convolutional decoder."""

    network = "SwinUNETR"
    Options = SwinUNETROptions
    args: ClassVar[dict[str, Arg]] = {
        "feature_size": "feature_size", "depths": lambda o, c: tuple(o.depths),
        "num_heads": lambda o, c: tuple(o.num_heads), "window_size": "window_size",
        "dropout_path_rate": "drop_path", "use_v2": "use_v2"}
    unless_none: ClassVar[dict[str, str]] = {"norm_name": "norm"}
    fixed_stride = (32, "SwinUNETR patches by 2 then merges 4 times")
