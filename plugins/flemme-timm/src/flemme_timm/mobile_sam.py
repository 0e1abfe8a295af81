"""MobileSAM's image encoder (``sam`` family, ``variant: vit_t``), run by timm's TinyViT code.

MobileSAM (Zhang et al. 2023) replaces SAM's ViT with TinyViT-5M distilled to give SAM's
image embedding; MMFD distils into the same network. Its published ``mobile_sam.pt`` is the
whole ``Sam`` state dict with the encoder under ``image_encoder.*`` in the ORIGINAL TinyViT
repository's layout, which timm's ``tiny_vit`` renamed (timm 1.0's ``checkpoint_filter_fn``
only resizes attention-bias tables; its hub files were converted once, offline). Beside the
names, MobileSAM's TinyViT differs from ImageNet TinyViT in two ways that change outputs but
not shapes, so a plain key map onto ``tiny_vit_5m_224`` would load silently and be wrong:

* its last patch merging keeps the grid (depth-wise conv stride 1), so the last stage runs at
  stride 16, not 32 (1024 input -> 64², as SAM's ViT);
* SAM's neck follows the last stage: conv 1×1 (no bias) -> LayerNorm2d -> conv 3×3 (no bias)
  -> LayerNorm2d (eps 1e-6), 320 -> 256 channels.

:class:`MobileSamTinyViT` is timm's stem and stages with that stride and neck; its keys are
timm's (``patch_embed.conv1.conv.*``, ``stages.{i}.*``) plus ``neck.{0..3}.*``.
:func:`mobile_sam_to_timm` maps MobileSAM's names onto them:

* ``Conv2d_BN``'s ``c`` -> timm ``ConvNorm``'s ``conv`` (``bn`` stays);
* ``patch_embed.seq.0`` / ``seq.2`` -> ``patch_embed.conv1`` / ``conv2`` (``seq.1`` is the GELU);
* ``layers.{i}`` -> ``stages.{i}``, except that each stage's patch merging, the *end* of
  ``layers.{i}`` in the original, is the *start* of ``stages.{i+1}`` in timm;
* the unused classifier (``norm_head``, ``head``: MobileSAM's forward stops at the neck) and the
  derived ``attention_bias_idxs`` are dropped; the prompt encoder and mask decoder are not the
  encoder's and are dropped too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: MobileSAM's TinyViT (build_sam_vit_t): tiny_vit_5m_224's dimensions, trained at 1024 input.
NATIVE_SIZE = 1024
ARCH = {"embed_dims": (64, 128, 160, 320), "depths": (2, 2, 6, 2), "num_heads": (2, 4, 5, 10),
        "window_sizes": (7, 7, 14, 7), "mlp_ratio": 4.0, "mbconv_expand_ratio": 4.0, "local_conv_size": 3}
#: keys under the encoder that MobileSAM keeps but never runs (TinyViT's ImageNet classifier).
UNUSED = ("norm_head.", "head.")
_STAGE = re.compile(r"^layers\.(\d+)\.(.*)$")
_STEM = {"patch_embed.seq.0.": "patch_embed.conv1.", "patch_embed.seq.2.": "patch_embed.conv2."}


def is_mobile_sam(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` holds a TinyViT in its original layout (MobileSAM's ``image_encoder.*``
    or the TinyViT repository's own), recognised by the stem's ``patch_embed.seq.*`` names."""
    return any(k.removeprefix("image_encoder.").startswith("patch_embed.seq.") for k in state)


def _rename(key: str) -> str | None:
    """One original-layout encoder key -> timm's name (None: a key to drop)."""
    if key.startswith(UNUSED) or key.endswith("attention_bias_idxs"):
        return None
    key = ".".join("conv" if part == "c" else part for part in key.split("."))
    for old, new in _STEM.items():
        if key.startswith(old):
            return new + key[len(old):]
    found = _STAGE.match(key)
    if found:
        stage, rest = int(found.group(1)), found.group(2)
        if rest.startswith("downsample."):
            stage += 1
        return f"stages.{stage}.{rest}"
    return key


def mobile_sam_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MobileSAM's checkpoint (or a bare original-layout TinyViT) -> :class:`MobileSamTinyViT`'s
    keys. With ``image_encoder.*`` keys, only those are kept (the prompt encoder and mask
    decoder are dropped); a dict already in timm's layout is returned as is."""
    if not is_mobile_sam(state):
        return dict(state)
    if any(k.startswith("image_encoder.") for k in state):
        state = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = _rename(key)
        if new is not None:
            out[new] = value
    return out


class MobileSamTinyViT(nn.Module):
    """MobileSAM's image encoder: timm TinyViT-5M's stem and stages (last merging at stride 1)
    and SAM's neck; ``forward_features`` gives the image embedding ``[neck, H/16, W/16]``."""

    def __init__(self, timm: Any, in_channels: int = 3, neck_channels: int = 256, drop_path: float = 0.0):
        super().__init__()
        # timm's class itself rather than its registry name, which another package may re-register
        tiny = timm.models.tiny_vit.TinyVit(in_chans=in_channels, num_classes=0, drop_path_rate=drop_path, **ARCH)
        self.patch_embed, self.stages = tiny.patch_embed, tiny.stages  # timm's classifier head is not used
        self.stages[-1].downsample.conv2.conv.stride = (1, 1)
        norm = timm.layers.LayerNorm2d  # over the channels of a (B, C, H, W) map, as SAM's neck
        self.neck = nn.Sequential(
            nn.Conv2d(ARCH["embed_dims"][-1], neck_channels, 1, bias=False), norm(neck_channels, eps=1e-6),
            nn.Conv2d(neck_channels, neck_channels, 3, padding=1, bias=False), norm(neck_channels, eps=1e-6))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.stages(self.patch_embed(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
