"""The ``sam`` family: SAM's (and MedSAM's) ViT image encoder, run by timm's ``samvit``, and
MobileSAM's TinyViT image encoder (``variant: vit_t``, :mod:`flemme_timm.mobile_sam`).

Output: the image embedding after SAM's neck, ``[neck_channels (256), H/16, W/16]`` (MMFD's
MedSAM branch: [256, 32²] at 512 input), one level; ``pyramid`` adds more.

Weights: the ORIGINAL checkpoint as published (``sam_vit_b_01ec64.pth``, ``medsam_vit_b.pth``:
keys ``image_encoder.*`` beside ``prompt_encoder.*``/``mask_decoder.*``, which are not the
encoder's and are dropped), or timm's ``samvit`` layout; ``.pth`` only through
``torch.load(weights_only=True)`` (or ``flemme convert`` it once). The key map is timm's own
(``image_encoder.`` stripped, ``mlp.lin*`` -> ``mlp.fc*``); every encoder key must be filled
and nothing else may be left (one-line error otherwise). Layer norms use SAM's eps (1e-6).
The absolute position table keeps the checkpoint's grid (1024 / 16 = 64²) and is resampled
to the input's grid on the fly (bicubic), and the global blocks' relative position tables
are interpolated as SAM's own ``get_rel_pos`` does, so 512 inputs use the 1024 weights.
``vit_t`` (MobileSAM, as its ``sam_model_registry`` names it) has the same output and
normalisation, reads ``mobile_sam.pt`` and has no position table (windows are padded).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import nn

from flemme_core.config import EncoderConfig, choice
from flemme_core.errors import CheckpointError, ConfigError
from flemme_core.weights import adapt_input_weight, load_into, read_weights

from .mobile_sam import NATIVE_SIZE, MobileSamTinyViT, is_mobile_sam, mobile_sam_to_timm
from .pretrained import PretrainedEncoder, PretrainedOptions
from .timm_import import import_timm

#: SAM's published image encoders (segment_anything.build_sam), as timm names them.
VARIANTS = {
    "vit_b": {"timm": "samvit_base_patch16", "embed_dim": 768, "depth": 12, "num_heads": 12,
              "global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"timm": "samvit_large_patch16", "embed_dim": 1024, "depth": 24, "num_heads": 16,
              "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"timm": "samvit_huge_patch16", "embed_dim": 1280, "depth": 32, "num_heads": 16,
              "global_attn_indexes": [7, 15, 23, 31]},
}
#: MobileSAM's image encoder (TinyViT-5M + SAM's neck), not a ViT: no architecture overrides.
MOBILE = "vit_t"
VIT_OVERRIDES = ("embed_dim", "depth", "num_heads", "global_attn_indexes")
SAM_MEAN, SAM_STD = (123.675 / 255, 116.28 / 255, 103.53 / 255), (58.395 / 255, 57.12 / 255, 57.375 / 255)


@dataclasses.dataclass
class SamOptions(PretrainedOptions):
    variant: str = "vit_b"                      # vit_b (MedSAM) | vit_l | vit_h | vit_t (MobileSAM's TinyViT)
    native_size: int | None = None              # the checkpoint's input size (SAM: 1024; read from weights)
    # Architecture overrides of the variant (null: the variant's); for custom or tiny models.
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    global_attn_indexes: list[int] | None = None
    window_size: int = 14
    neck_channels: int = 256
    patch: int = 16

    def validate(self) -> None:
        super().validate()
        choice(self.variant, [*VARIANTS, MOBILE], "model.encoder.variant")
        given = [k for k in VIT_OVERRIDES if getattr(self, k) is not None]
        if self.variant == MOBILE and given:
            raise ConfigError(f"model.encoder.{given[0]} overrides SAM's ViT; variant vit_t is MobileSAM's TinyViT "
                              f"(fixed TinyViT-5M): remove {', '.join(given)} or choose vit_b/vit_l/vit_h")


def sam_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original SAM layout -> timm's (timm's own filter); a timm-layout dict is kept."""
    if not any(k.startswith("image_encoder.") for k in state):
        return dict(state)
    from timm.models.vision_transformer_sam import checkpoint_filter_fn

    return checkpoint_filter_fn(state, None)


class SamEncoder(PretrainedEncoder):
    """See the module docstring."""

    Options = SamOptions
    #: flemme export: timm's SAM pads each windowed-attention block per input size; tracing that
    #: symbolically takes torch's shape solver many minutes, so exports keep the patch size
    export_fixed_spatial = "SAM's windowed attention pads per input size (symbolic tracing takes many minutes)"

    def build_backbone(self, cfg: EncoderConfig, opts: SamOptions):  # type: ignore[override]
        timm = import_timm()
        if opts.variant == MOBILE:
            return self.build_mobile_sam(timm, cfg, opts)
        variant = VARIANTS[opts.variant]
        arch = {k: getattr(opts, k) if getattr(opts, k) is not None else variant[k]
                for k in ("embed_dim", "depth", "num_heads", "global_attn_indexes")}
        state = None
        native = opts.native_size
        if opts.weights:
            state = read_weights(opts.weights)
            if is_mobile_sam(state):
                raise CheckpointError(f"{opts.weights!r} is MobileSAM's checkpoint (TinyViT image encoder), not SAM "
                                      f"{opts.variant}'s ViT; set model.encoder.variant: vit_t")
            state = sam_to_timm(state)
            pos = state.get("pos_embed")
            if pos is not None and pos.dim() == 4:
                native = int(pos.shape[1]) * opts.patch
        native = native or 1024
        if native % opts.patch:
            raise ConfigError(f"model.encoder.native_size {native} must be a multiple of the patch size {opts.patch}")
        self.native_size = native
        model = timm.create_model(
            variant["timm"], pretrained=False, num_classes=0, in_chans=cfg.in_channels, img_size=native,
            patch_size=opts.patch, window_size=opts.window_size, neck_chans=opts.neck_channels,
            norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), drop_path_rate=cfg.drop_path, **arch)
        if state is not None:
            if "patch_embed.proj.weight" in state:
                state["patch_embed.proj.weight"] = adapt_input_weight(state["patch_embed.proj.weight"], cfg.in_channels)
            load_into(model, state, f"{opts.weights!r} as SAM {opts.variant}",
                      hint="give SAM's/MedSAM's original checkpoint (image_encoder.* keys) of this variant, "
                           "or set variant/embed_dim/depth to the checkpoint's")
        self.backend = f"timm {timm.__version__}: {variant['timm']} (SAM {opts.variant}, native {native})"
        return model, [opts.neck_channels], [opts.patch], (SAM_MEAN, SAM_STD)

    def build_mobile_sam(self, timm: Any, cfg: EncoderConfig, opts: SamOptions):
        """MobileSAM's TinyViT + neck, ``mobile_sam.pt`` key-mapped onto timm's TinyViT names.

        LoRA ``qv`` needs nothing here: core reads the per-head qkv layout off timm's attention."""
        model = MobileSamTinyViT(timm, cfg.in_channels, opts.neck_channels, cfg.drop_path)
        if opts.weights:
            state = mobile_sam_to_timm(read_weights(opts.weights))
            first = "patch_embed.conv1.conv.weight"
            if first in state:
                state[first] = adapt_input_weight(state[first], cfg.in_channels)
            load_into(model, state, f"{opts.weights!r} as MobileSAM's image encoder (vit_t)",
                      hint="give MobileSAM's mobile_sam.pt (image_encoder.* in TinyViT's layout), or set variant "
                           "to the checkpoint's (vit_b/vit_l/vit_h for SAM's ViT)")
        self.native_size = NATIVE_SIZE
        self.backend = f"timm {timm.__version__}: tiny_vit_5m_224 + SAM neck (MobileSAM vit_t)"
        return model, [opts.neck_channels], [16], (SAM_MEAN, SAM_STD)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.backbone.forward_features(x)]

    def structure_options(self) -> dict[str, Any]:
        return {"native_size": self.native_size}


def encoder(cfg: EncoderConfig) -> SamEncoder:
    return SamEncoder(cfg)
