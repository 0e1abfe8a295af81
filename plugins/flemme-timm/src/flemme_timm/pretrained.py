"""What the pretrained families (timm, sam, clip) share: the encoder contract around a network
that is run as published.

:class:`PretrainedEncoder` takes the family's backbone (``build_backbone``) and adds

* the model's own input normalisation (``normalize``; ``mean``/``std`` override it): images
  are expected in [0, 1], as the network was trained;
* 1-channel (or any C-channel) input on 3-channel weights by smp's/timm's rule: the RGB
  filters of the first convolution summed for 1 channel
  (:func:`flemme_core.weights.adapt_input_weight`), the
  normalisation constants averaged to match;
* ``freeze`` (no gradient, statistics kept: eval mode) and ``lora`` (core adapters, e.g.
  ``{rank: 4, targets: [qv]}``: MMFD's LoRA on SAM's attention q and v);
* ``pyramid``: extra output strides made from the last feature map, ViTDet's simple feature
  pyramid (transposed convolutions up, max-pooling down; trainable), for architectures that
  need several levels (``hunet``) from a single-scale network (SAM, CLIP);
* decoder blocks from a registered staged family (``decoder``, default ``cnn`` with
  interpolation up-sampling, as smp's U-Net decoder) with the
  common keys ``num_blocks``, ``norm``, ``act`` and ``dropout`` going to it (the network's own
  norms and activations are fixed); ``dropout`` also drops the encoder's output features, and
  ``drop_path`` is the network's stochastic depth where it has one (timm's ``drop_path_rate``);
* the declared capabilities: 2D only (refused in one line for 3D) and
  ``supports_context = False`` (a published network has no context injection).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from flemme_core.config import EncoderConfig, parse_options
from flemme_core.encoder import Encoder, registered_block_family
from flemme_core.errors import ConfigError, ShapeError
from flemme_core.lora import LoRAOptions, freeze_with_lora
from flemme_core.weights import adapt_constants

#: keys of a family config that only say where the initial weights come from.
FILE_KEYS = ("weights",)


@dataclasses.dataclass
class PretrainedOptions:
    """Options every pretrained family has (see the module docstring)."""

    weights: str | None = None       # a local file (.safetensors, or .pth/.bin via weights_only); a folder for clip
    normalize: bool = True           # apply the model's mean/std to [0, 1] images
    mean: list[float] | None = None  # override the model's normalisation constants (RGB)
    std: list[float] | None = None
    freeze: bool = False             # no gradient into the pretrained network (adapters excepted)
    lora: Any = None                 # null, or {rank: 4, alpha: 4, targets: [qv]}
    pyramid: list[int] | None = None  # output strides from the last feature map (e.g. [8, 16, 32]); null: native
    # The registered family (a name or {name: cnn, block: res_conv}) of the decoder's blocks. Default cnn with
    # interpolation up-sampling, as smp's U-Net decoder: a transposed convolution over SAM's or CLIP's 16-32×
    # last step back to the input would alone hold 17-600 M parameters.
    decoder: Any = dataclasses.field(default_factory=lambda: {"name": "cnn", "up": "interp"})

    def validate(self) -> None:
        if self.lora is not None:
            self.lora = parse_options(LoRAOptions, {"targets": ["qv"], **dict(self.lora or {})}, "model.encoder.lora")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, list) or len(value) != 3):
                raise ConfigError(f"model.encoder.{key} must be 3 numbers (RGB), got {value!r}")
        if self.pyramid is not None:
            if not (isinstance(self.pyramid, list) and self.pyramid and all(
                    isinstance(s, int) and s > 0 and s & (s - 1) == 0 for s in self.pyramid)):
                raise ConfigError(f"model.encoder.pyramid must list output strides that are powers of 2, "
                                  f"e.g. [8, 16, 32], got {self.pyramid!r}")
            self.pyramid = sorted(set(self.pyramid))


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid from one map at ``native`` stride: each finer stride by
    2× transposed convolutions (LayerNorm-GELU between, channels halved per step), each coarser
    one by max-pooling, the native stride as it is. Outputs fine to coarse."""

    def __init__(self, channels: int, native: int, strides: Sequence[int]):
        super().__init__()
        self.levels = nn.ModuleList()
        self.channels: list[int] = []
        for stride in strides:
            if stride < native:
                layers: list[nn.Module] = []
                width = channels
                for step in range(int(math.log2(native // stride))):
                    if step:
                        layers += [nn.GroupNorm(1, width), nn.GELU()]
                    layers.append(nn.ConvTranspose2d(width, width // 2, 2, stride=2))
                    width //= 2
                self.levels.append(nn.Sequential(*layers))
                self.channels.append(width)
            elif stride > native:
                self.levels.append(nn.MaxPool2d(stride // native))
                self.channels.append(channels)
            else:
                self.levels.append(nn.Identity())
                self.channels.append(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels]


class PretrainedEncoder(Encoder):
    """See the module docstring; subclasses set ``Options`` and implement ``build_backbone`` and
    ``features``."""

    Options: ClassVar[type] = PretrainedOptions
    supports_context = False

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.dims != 2:
            raise ConfigError(f"encoder family {cfg.name!r} is 2D only (a pretrained 2D network); use --dims 2, or a "
                              f"family that builds 3D (cnn, vit, swin, mamba) for {cfg.dims}D images")
        for key in ("channels", "patch_size"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"model.encoder.{key} is fixed by the pretrained network of {cfg.name!r}; remove it "
                                  f"(the pyramid option sets extra output strides)")
        self.given = cfg
        self.options = opts = parse_options(self.Options, dict(cfg.options), f"model.encoder ({cfg.name} options)")
        self.dims, self.in_channels = 2, cfg.in_channels
        self.backbone, channels, strides, (mean, std) = self.build_backbone(cfg, opts)
        self.normalize = bool(opts.normalize)
        c = cfg.in_channels
        self.register_buffer("mean", torch.tensor(adapt_constants(opts.mean or mean, c)).view(1, c, 1, 1), False)
        self.register_buffer("std", torch.tensor(adapt_constants(opts.std or std, c)).view(1, c, 1, 1), False)
        self.frozen = bool(opts.freeze)
        self.lora_layers = freeze_with_lora(self.backbone, self.frozen, opts.lora)
        self.feature_dropout = nn.Dropout(cfg.dropout) if cfg.dropout else None
        self.pyramid = None
        if opts.pyramid is not None:
            self.pyramid = SimplePyramid(channels[-1], strides[-1], opts.pyramid)
            channels, strides = self.pyramid.channels, list(opts.pyramid)
        self.feature_channels, self.feature_strides = list(channels), list(strides)
        spec = dict(opts.decoder) if isinstance(opts.decoder, Mapping) else {"name": opts.decoder}
        for key in ("num_blocks", "norm", "act", "dropout"):
            if getattr(cfg, key) not in (None, 0.0):
                spec.setdefault(key, getattr(cfg, key))
        self.blocks = registered_block_family(spec, cfg)
        fam = self.blocks.cfg
        num_blocks = fam.num_blocks if isinstance(fam.num_blocks, int) else 1
        self.config = dataclasses.replace(cfg, options=dict(cfg.options), channels=self.feature_channels,
                                          patch_size=self.feature_strides[0], num_blocks=num_blocks,
                                          norm=fam.norm, act=fam.act)

    # -- for subclasses ----------------------------------------------------------------
    def build_backbone(self, cfg: EncoderConfig, opts: Any) -> tuple[nn.Module, list[int], list[int],
                                                                       tuple[Sequence[float], Sequence[float]]]:
        """(network, channels per level, stride per level, (mean, std)) with weights loaded."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's features of the normalised image, fine to coarse, channels-first."""
        raise NotImplementedError

    def structure_options(self) -> dict[str, Any]:
        """Options that rebuild the structure without the files (e.g. a config read from them)."""
        return {}

    # -- contract ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"{self.given.name} encoder expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.normalize:
            x = (x - self.mean) / self.std
        if self.frozen and not self.lora_layers:
            with torch.no_grad():
                feats = self.features(x)
        else:
            feats = self.features(x)
        if self.pyramid is not None:
            feats = self.pyramid(feats[-1])
        if self.feature_dropout is not None:
            feats = [self.feature_dropout(f) for f in feats]
        return feats

    def extra_repr(self) -> str:
        """The decoder blocks the common keys chose (they are built by the architecture, not here)."""
        fam = self.blocks.cfg
        return (f"decoder blocks: {fam.name} (num_blocks={fam.num_blocks}, norm={fam.norm}, act={fam.act}, "
                f"dropout={fam.dropout}, options={fam.options})")

    def components(self) -> list[tuple[str, str]]:
        """The decoder's family is a registered component too (checkpoints record its plugin)."""
        return [("encoder", self.blocks.cfg.name)]

    def train(self, mode: bool = True) -> PretrainedEncoder:
        """A frozen network keeps its normalisation statistics: it stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def standalone_config(self) -> dict[str, Any]:
        """The given config without file paths, with what was read from the files inlined."""
        cfg = self.given
        spec = {k: getattr(cfg, k) for k in EncoderConfig.USER_KEYS if getattr(cfg, k) is not None}
        options = {k: v for k, v in cfg.options.items() if k not in FILE_KEYS}
        return {**spec, "options": {**options, **self.structure_options()}}
