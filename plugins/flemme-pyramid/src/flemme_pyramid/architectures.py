"""``hunet`` (Flemme's HSeM) and ``hae`` (Flemme's HAE): the core's unet/ae plus a pyramid.

They subclass the core's :class:`~flemme_core.architectures.encoder_decoder.UNet` and
:class:`~flemme_core.architectures.encoder_decoder.AutoEncoder`, so the encoder, the
shared :class:`~flemme_core.architectures.decoder.Decoder` and the full-resolution head
are theirs; the pyramid reads the decoder's level outputs (bottleneck, then every
up-stage, coarse to fine). The last decoder output feeds the normal head; every earlier
one is a pyramid level (refine -> 1×1 head). The normal output and the level
predictions are fused into the output.

Outputs (``forward``): ``[fused, h_1, ..., h_n]``: the fused full-resolution output
first, then the level predictions at their native resolution, fine to coarse (the
nnU-Net convention). ``predict`` returns the fused output; ``training_loss`` wraps the
trainer's criterion in the :class:`~flemme_pyramid.loss.PyramidLoss`, so the training
loop needs no pyramid-specific code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from flemme_core.architectures.base import Batch, BuildEncoder
from flemme_core.architectures.encoder_decoder import AEOptions, AutoEncoder, UNet, UNetOptions
from flemme_core.config import ModelConfig, choice
from flemme_core.errors import ConfigError

from .loss import IMAGE_RESIZE, LABEL_RESIZE, LEVEL_WEIGHTS, PyramidLoss
from .pyramid import FUSION_INITS, FUSIONS, LEVEL_MAPS, RESIZES, LevelHeads, VerticalFusion


@dataclasses.dataclass
class PyramidOptions:
    fusion: str = "concat"            # concat | sum
    fusion_init: str = "plain"        # plain (starts as the plain model's output) | random (Flemme's)
    resize: str = "linear"            # how level predictions are brought to full size: linear | nearest
    refine: bool = True               # a same-width block from the encoder's family before each level head
    level_map: str = "full"           # learnable map added per input before fusion: full | channel | none
    level_weights: str = "equal"      # equal (Flemme: mean over levels) | halving (nnU-Net)
    pyramid_weight: float = 1.0       # global weight of the level losses against the fused loss
    target_resize: str | None = None  # labels: majority (default) | nearest; images: area (default) | linear | nearest

    def validate(self) -> None:
        where = "model.arch_options"
        choice(self.fusion, FUSIONS, f"{where}.fusion")
        choice(self.fusion_init, FUSION_INITS, f"{where}.fusion_init")
        choice(self.resize, RESIZES, f"{where}.resize")
        choice(self.level_map, LEVEL_MAPS, f"{where}.level_map")
        choice(self.level_weights, LEVEL_WEIGHTS, f"{where}.level_weights")
        if self.pyramid_weight < 0:
            raise ConfigError(f"{where}.pyramid_weight must be non-negative, got {self.pyramid_weight}")
        if self.target_resize is not None:
            choice(self.target_resize, sorted(set(LABEL_RESIZE + IMAGE_RESIZE)), f"{where}.target_resize")


@dataclasses.dataclass
class HUNetOptions(UNetOptions, PyramidOptions):
    pass


@dataclasses.dataclass
class HAEOptions(AEOptions, PyramidOptions):
    pass


class Hierarchical:
    """Mixin over an :class:`EncoderDecoder`: builds the pyramid on the decoder's levels."""

    #: 'labels' or 'image': how the pyramid loss resizes targets.
    target_kind: ClassVar[str] = "labels"

    def __init__(self, config: ModelConfig, build_encoder: BuildEncoder):
        super().__init__(config, build_encoder)  # type: ignore[call-arg]
        enc, dec, opts = self.encoder, self.decoder, self.options
        channels = [enc.feature_channels[-1], *dec.level_channels]
        strides = [enc.feature_strides[-1], *dec.level_strides]
        if dec.final_up is not None:
            channels.append(dec.out_channels)
            strides.append(1)
        # The last decoder output feeds the normal head; the earlier ones are the pyramid.
        self.level_channels, self.level_strides = channels[:-1], strides[:-1]
        if not self.level_channels:
            raise ConfigError(f"{config.arch} needs an encoder with at least 2 levels (model.encoder.channels "
                              f"has {len(enc.feature_channels)}); give more channels, e.g. 32,64,128,256")
        allowed = LABEL_RESIZE if self.target_kind == "labels" else IMAGE_RESIZE
        self.target_resize = opts.target_resize or allowed[0]
        choice(self.target_resize, allowed, f"model.arch_options.target_resize for {config.arch}")
        self.pyramid = LevelHeads(enc.blocks, config.dims, self.level_channels, config.out_channels,
                                  refine=opts.refine)
        self.fusion = VerticalFusion(config.dims, config.out_channels, len(self.level_channels) + 1,
                                     config.image_size, mode=opts.fusion, level_map=opts.level_map,
                                     resize=opts.resize, init=opts.fusion_init)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> list[torch.Tensor]:
        levels = self.decoder(self.encoder(x, context), context)
        full = self.head(levels[-1])
        preds = self.pyramid(levels[:-1], context)  # coarse to fine
        fused = self.fusion([full, *preds], x.shape[2:])
        return [fused, *reversed(preds)]

    def pyramid_loss(self, criterion: nn.Module) -> nn.Module:
        """The criterion wrapped in the pyramid loss (as is if the config already names ``pyramid``)."""
        if any(isinstance(m, PyramidLoss) for m in criterion.modules()):
            return criterion
        o = self.options
        return PyramidLoss(criterion, level_weights=o.level_weights, pyramid_weight=o.pyramid_weight,
                           target=self.target_kind, target_resize=self.target_resize)

    def training_loss(self, batch: Batch, criterion: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = self.inputs_and_target(batch)  # type: ignore[attr-defined]
        loss_fn = self.pyramid_loss(criterion)
        loss = loss_fn(self(x), y)  # type: ignore[operator]
        logged: dict[str, float] = {}
        for module in loss_fn.modules():
            if isinstance(module, PyramidLoss):
                logged.update({k: v for k, v in module.last.items() if k != "loss"})
        return loss, logged

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The fused full-resolution output."""
        return self(x)[0]  # type: ignore[operator]

    def summary_extra(self) -> dict[str, Any]:
        o = self.options
        return {"pyramid": {
            "levels": [{"channels": c, "stride": s} for c, s in zip(self.level_channels[::-1], self.level_strides[::-1])],
            "outputs": "[fused, levels fine to coarse]", "fusion": o.fusion, "fusion_init": o.fusion_init,
            "refine": o.refine,
            "level_map": o.level_map, "level_weights": o.level_weights, "pyramid_weight": o.pyramid_weight,
            "target_resize": self.target_resize}}


class HUNet(Hierarchical, UNet):
    """Hierarchical segmentation (HSeM): logits ``[fused, levels fine to coarse]``."""

    Options = HUNetOptions
    target_kind = "labels"


class HAE(Hierarchical, AutoEncoder):
    """Hierarchical reconstruction (HAE): images ``[fused, levels fine to coarse]``."""

    Options = HAEOptions
    target_kind = "image"
