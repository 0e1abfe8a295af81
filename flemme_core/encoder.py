"""The encoder contract: what every encoder family gives every architecture.

An :class:`Encoder` is an ``nn.Module`` that

* takes ``(B, C_in, *spatial)`` (2D or 3D: ``dims`` is a parameter) and an optional
  context vector ``(B, context_dim)``;
* returns the multi-scale features **fine to coarse**, channels-first, one per level,
  with ``feature_channels[i]`` channels and ``feature_strides[i]`` total stride;
* carries ``blocks``, its family's :class:`BlockFamily`, so architectures build their
  decoder, refinement and bottleneck stages from the same family (a Mamba encoder gets
  a Mamba decoder) while owning the stage skeleton once;
* checks its shape rules at build time (:meth:`Encoder.check_image_size`).

Most families only implement a :class:`BlockFamily` (stem, stage of blocks, down/up
sampling) and register ``staged_encoder(TheirFamily)``; :class:`StagedEncoder` turns it
into a multi-level encoder. Families that need something else (a fusion of several
encoders, a pretrained network) subclass :class:`Encoder` directly.

Every stage accepts ``context``: blocks inject it as ``x * (1 + W_g c) + W_b c``
(:class:`ContextInjection`) so diffusion models can condition every block. That is a declared
capability, ``supports_context`` (on :class:`BlockFamily` and :class:`Encoder`, ``True`` by
default): a family that cannot condition its encoder's blocks (a pretrained network run as
published) sets it to ``False``, and building it with a context vector is refused in one line
(by the encoder builder an architecture gets, when asked for ``context_dim``), never a silent no-op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .config import EncoderConfig, parse_options
from .errors import ConfigError, ShapeError


class ContextInjection(nn.Module):
    """Flemme's per-block conditioning ``x * (1 + W_g c) + W_b c`` over the channel axis."""

    def __init__(self, context_dim: int, channels: int, channel_axis: int = 1):
        super().__init__()
        self.proj = nn.Linear(context_dim, 2 * channels)
        self.channel_axis = channel_axis

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if context is None:
            raise ShapeError("this model was built with a context vector; pass context=(B, context_dim)")
        gain, bias = self.proj(context).chunk(2, dim=-1)
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        shape[self.channel_axis] = -1
        return x * (1 + gain.view(shape)) + bias.view(shape)


class ContextSequential(nn.Sequential):
    """A sequence of blocks that all receive the context vector."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, context)
        return x


class BlockFamily:
    """A family's building blocks; channels-first tensors at every boundary.

    Subclasses set ``name``, ``Options`` (a dataclass of family-specific options) and
    ``defaults`` (values for the common ``EncoderConfig`` fields left as ``None``), and
    implement the four builders. ``self.cfg`` is the resolved config, ``self.options``
    the parsed options and ``self.cfg.context_dim`` the context width (or ``None``).
    """

    name: ClassVar[str] = "family"
    Options: ClassVar[type] = dataclasses.make_dataclass("NoOptions", [])
    defaults: ClassVar[dict[str, Any]] = {}
    # The token mixers this family can build, its own first (e.g. ("attention", "identity")).
    # A family that lists "identity" opts into the mixer ablation: ``mixer: identity`` keeps
    # every other part of its blocks and replaces the mixer by the identity (see
    # flemme_core.ablation.check_identity_mixer). Empty: the family has no ``mixer`` key.
    mixers: ClassVar[tuple[str, ...]] = ()
    # A regular expression matching the names of the mixer's own parameters (searched in
    # full parameter names); what ``mixer: identity`` removes, and nothing else.
    mixer_parameters: ClassVar[str] = ""
    # Whether every block injects the context vector (diffusion's timestep); see the module docstring.
    supports_context: ClassVar[bool] = True

    def __init__(self, cfg: EncoderConfig):
        self.cfg = cfg
        options = dict(cfg.options)
        self.mixer = self._resolve_mixer(options.pop("mixer", None))
        self.options = parse_options(self.Options, options, f"model.encoder ({cfg.name} options)")

    def _resolve_mixer(self, value: Any) -> str | None:
        """The ``mixer`` key: one of :attr:`mixers` (default the first); refused in one line
        by a family without mixers or without the asked one."""
        if value is None:
            return self.mixers[0] if self.mixers else None
        if not self.mixers:
            raise ConfigError(f"model.encoder.mixer: the {self.cfg.name!r} family has no token mixer to replace; "
                              f"mixer: {value} is for token families that declare it (vit, swin, mamba)")
        if value not in self.mixers:
            raise ConfigError(f"model.encoder.mixer: the {self.cfg.name!r} family does not support mixer: {value}; "
                              f"it builds {' or '.join(map(str, self.mixers))}")
        return str(value)

    @property
    def dims(self) -> int:
        return self.cfg.dims

    @property
    def context_dim(self) -> int | None:
        return self.cfg.context_dim

    def stem(self, in_channels: int, out_channels: int, patch_size: int) -> nn.Module | None:
        """Embed the image: ``(B, in, *S) -> (B, out, *S / patch_size)``.

        ``None`` means no separate stem: stage 0 then maps ``in_channels`` to
        ``channels[0]`` itself (a plain U-Net's first level, at ``patch_size`` 1).
        """
        raise NotImplementedError

    def stage(self, in_channels: int, out_channels: int, num_blocks: int,
              drop_path: Sequence[float] = ()) -> nn.Module:
        """``num_blocks`` blocks, first mapping in->out channels; ``forward(x, context=None)``."""
        raise NotImplementedError

    def down(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        """Down-sample by ``factor`` along every spatial axis."""
        raise NotImplementedError

    def up(self, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
        """Up-sample by ``factor`` along every spatial axis."""
        raise NotImplementedError

    def refine(self, channels: int) -> nn.Module:
        """A same-width block for refinement (pyramid levels); ``forward(x, context=None)``."""
        return self.stage(channels, channels, 1)

    def check_feature_size(self, level: int, size: Sequence[int]) -> str | None:
        """Family-specific rule for the feature map at ``level`` (e.g. a window size); a message or None."""
        return None


class Encoder(nn.Module):
    """Base class of the encoder contract (see the module docstring)."""

    dims: int
    in_channels: int
    feature_channels: list[int]
    feature_strides: list[int]
    blocks: BlockFamily
    config: EncoderConfig
    backend: str = ""  # e.g. which scan kernel a family uses; shown in the build summary
    # Whether every encoder block is conditioned on the context vector (see the module docstring).
    supports_context: bool = True

    @property
    def context_dim(self) -> int | None:
        return self.config.context_dim

    @property
    def total_stride(self) -> int:
        return self.feature_strides[-1]

    def components(self) -> list[tuple[str, str]]:
        """(kind, name) of other registered components this encoder is built from (a fusion
        encoder's branch families and strategy); checkpoints record their plugins."""
        return []

    def standalone_config(self) -> dict[str, Any] | None:
        """The encoder config (as a ``model.encoder`` mapping) that rebuilds this structure
        without reading any file, for checkpoints; ``None``: the config as given does. An
        encoder initialised from files (a fusion branch's checkpoint) inlines what it read
        from them and drops the paths: the checkpoint holds the weights."""
        return None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> list[torch.Tensor]:
        raise NotImplementedError

    def check_image_size(self, size: Sequence[int]) -> None:
        """Raise a :class:`ShapeError` stating the rule and a valid size."""
        stride = self.total_stride
        if any(s % stride for s in size):
            valid = [max(stride, -(-s // stride) * stride) for s in size]
            shown = "×".join(str(s) for s in size)
            raise ShapeError(
                f"image size {shown} must be divisible by the total stride {stride} of this encoder "
                f"(patch size {self.feature_strides[0]} × 2^{len(self.feature_strides) - 1}); "
                f"pad to {'×'.join(map(str, valid))} or use --image-size {valid[0] if len(set(valid)) == 1 else ','.join(map(str, valid))}"
            )
        for level, level_stride in enumerate(self.feature_strides):
            problem = self.blocks.check_feature_size(level, [s // level_stride for s in size])
            if problem:
                raise ShapeError(problem)


def drop_path_schedule(rate: float, counts: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over all blocks."""
    total = sum(counts)
    rates = torch.linspace(0, rate, total, device="cpu").tolist() if total > 1 else [rate] * total  # cpu: also under a meta-device build
    out, start = [], 0
    for n in counts:
        out.append(rates[start:start + n])
        start += n
    return out


class StagedEncoder(Encoder):
    """stem -> [stage_0] -> [down -> stage_i]...: features fine to coarse, one per level.

    Level ``i`` has ``channels[i]`` channels and stride ``patch_size * 2**i``; the last
    level is the bottleneck.
    """

    COMMON_DEFAULTS: ClassVar[dict[str, Any]] = {
        "channels": [32, 64, 128, 256],
        "num_blocks": 2,
        "patch_size": 2,
        "norm": "batch",
        "act": "relu",
    }

    def __init__(self, family_cls: type[BlockFamily], cfg: EncoderConfig):
        super().__init__()
        cfg = resolve_defaults(family_cls, cfg)
        self.config = cfg
        self.blocks = family_cls(cfg)
        self.supports_context = family_cls.supports_context
        self.dims, self.in_channels = cfg.dims, cfg.in_channels
        channels = list(cfg.channels)
        counts = cfg.num_blocks if isinstance(cfg.num_blocks, list) else [cfg.num_blocks] * len(channels)
        if len(counts) != len(channels):
            raise ConfigError(f"model.encoder.num_blocks has {len(counts)} values but channels has "
                              f"{len(channels)} levels; give one number or one per level")
        rates = drop_path_schedule(cfg.drop_path, counts)
        self.stem = self.blocks.stem(cfg.in_channels, channels[0], cfg.patch_size)
        if self.stem is None and cfg.patch_size != 1:
            raise ConfigError(f"encoder family {cfg.name!r} has no stem for patch_size {cfg.patch_size}; use 1")
        self.downs = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i, width in enumerate(channels):
            if i > 0:
                self.downs.append(self.blocks.down(channels[i - 1], width, 2))
            first = cfg.in_channels if i == 0 and self.stem is None else width
            self.stages.append(self.blocks.stage(first, width, counts[i], rates[i]))
        self.feature_channels = channels
        self.feature_strides = [cfg.patch_size * 2 ** i for i in range(len(channels))]

    def standalone_config(self) -> dict[str, Any]:
        """Every default resolved (common keys and the family's options), so that a checkpoint
        rebuilds the same network after a release changes a family's defaults."""
        spec: dict[str, Any] = {key: getattr(self.config, key) for key in EncoderConfig.USER_KEYS}
        options = self.blocks.options
        resolved = ({f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
                    if dataclasses.is_dataclass(options) else {})
        mixer = {"mixer": self.blocks.mixer} if self.blocks.mixers else {}
        return {**spec, "options": {**self.config.options, **resolved, **mixer}}

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> list[torch.Tensor]:
        if self.stem is not None:
            x = self.stem(x)
        features = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downs[i - 1](x)
            x = stage(x, context)
            features.append(x)
        return features


def resolve_defaults(family_cls: type[BlockFamily], cfg: EncoderConfig) -> EncoderConfig:
    """Fill ``None`` fields from the family's defaults, then the common ones."""
    cfg = dataclasses.replace(cfg, options=dict(cfg.options))
    for key, common in StagedEncoder.COMMON_DEFAULTS.items():
        if getattr(cfg, key) is None:
            value = family_cls.defaults.get(key, common)
            setattr(cfg, key, list(value) if isinstance(value, list) else value)
    if not isinstance(cfg.patch_size, int) or cfg.patch_size < 1:
        raise ConfigError(f"model.encoder.patch_size must be a positive integer, got {cfg.patch_size!r}")
    return cfg


def staged_encoder(family_cls: type[BlockFamily]) -> Callable[[EncoderConfig], StagedEncoder]:
    """The factory a plugin registers for a block family: ``register('cnn', 'pkg.mod:encoder')``.

    Contract: ``factory.family`` is the :class:`BlockFamily` class. Other components build the
    family's blocks from it without an encoder (:func:`registered_block_family`: the decoder of a
    fusion or pretrained encoder); a hand-written factory sets it when it has such a family."""

    def factory(cfg: EncoderConfig) -> StagedEncoder:
        return StagedEncoder(family_cls, cfg)

    factory.family = family_cls  # type: ignore[attr-defined]
    return factory


def registered_block_family(spec: str | dict[str, Any], cfg: EncoderConfig) -> BlockFamily:
    """The :class:`BlockFamily` of a registered staged family (a name or an encoder mapping such as
    ``{name: cnn, block: res_conv}``), resolved for ``cfg``'s dims, channels and context: the
    decoder blocks of an encoder that has none of its own (a fusion, a pretrained network)."""
    from .config import encoder_config_from_dict
    from .registry import get_registry

    fcfg = encoder_config_from_dict(spec)
    factory = get_registry().get("encoder", fcfg.name).load()
    family = getattr(factory, "family", None)
    if family is None:
        raise ConfigError(f"encoder {fcfg.name!r} has no block family to build a decoder from; name a staged "
                          f"family such as cnn")
    fcfg = dataclasses.replace(fcfg, dims=cfg.dims, in_channels=cfg.in_channels,
                               image_size=list(cfg.image_size), context_dim=cfg.context_dim)
    return family(resolve_defaults(family, fcfg))
