"""The ``mmfd`` fusion encoder: N registered encoders presented as one ordinary encoder.

Each branch (any family, any widths and strides) sees the image through its own
adapter. The fused pyramid starts at the *anchor* stride and halves resolution per
level: ``anchor`` is ``finest`` / ``coarsest`` (over the branches' finest contributed
strides), a branch id, or a fixed stride; never hard-coded. At every fused level each
branch contributes its level of nearest stride, aligned to the level's width (``mlp``:
LayerNorm -> MLP, or ``conv``: 1×1), resampled to the level's grid, and merged by the
configured fusion strategy (any registered one). ``channels`` gives the fused widths
(and so the number of levels); by default the pyramid reaches the coarsest branch stride and
each level is as wide as the widest branch feature feeding it.

``residual: <branch id>`` makes the fused encoder a refinement of one branch: each level
is that branch's own feature plus the fusion scaled by a per-channel factor that starts
at zero (ReZero, ControlNet's zero convolution). The fused encoder then starts as exactly
that branch (with ``distill``'s ``teacher_init`` the whole teacher starts as its model),
so training the fusion can only move away from it where the other branches help.

The result honours the encoder contract (features fine to coarse, ``feature_channels``,
``feature_strides``, ``blocks`` for the decoder), so ``unet``, ``ae`` or ``hunet`` run
on top unchanged. ``decoder_family`` picks whose blocks the decoder uses.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from flemme_core.config import EncoderConfig, parse_options
from flemme_core.encoder import BlockFamily, Encoder, registered_block_family
from flemme_core.errors import ConfigError, ShapeError, unknown_name_message

from .align import channel_align, resample
from .branch import Branch
from .options import FusionEncoderOptions, split_branch


class FusionEncoder(Encoder):
    """See the module docstring."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        opts = parse_options(FusionEncoderOptions, cfg.options, "model.encoder (mmfd options)")
        self.options, self.given = opts, cfg
        self.dims, self.in_channels = cfg.dims, cfg.in_channels
        self.branches = nn.ModuleList(Branch(i, *split_branch(spec, i), cfg) for i, spec in enumerate(opts.branches))
        ids = [b.id for b in self.branches]
        if len(set(ids)) != len(ids):
            for i, b in enumerate(self.branches):
                if ids.count(b.id) > 1:
                    b.id = f"{b.id}{i}"
        self.branch_ids = [b.id for b in self.branches]

        anchor = self._anchor_stride(opts.anchor)
        residual = self._branch(opts.residual) if opts.residual is not None else None
        coarsest = max(b.strides[i] for b in ([residual] if residual else self.branches) for i in b.levels)
        num_levels = len(cfg.channels) if cfg.channels else max(1, round(math.log2(coarsest / anchor)) + 1)
        self.feature_strides = [anchor * 2 ** i for i in range(num_levels)]
        # Default width of a level: the residual branch's, else the widest branch feature that feeds it.
        widths = list(cfg.channels) if cfg.channels else [
            max(b.channels[b.pick(s)] for b in ([residual] if residual else self.branches))
            for s in self.feature_strides]
        self.feature_channels = widths
        self.picks = [[b.pick(s) for s in self.feature_strides] for b in self.branches]
        self.residual_index = None if residual is None else list(self.branches).index(residual)
        if residual is not None:
            self._check_residual(residual)
            # ReZero/ControlNet-style: fused = branch feature + scale * fusion, scale = 0 at start.
            self.residual_scales = nn.ParameterList(nn.Parameter(torch.zeros(w)) for w in widths)

        self.aligners = nn.ModuleList(
            nn.ModuleList(channel_align(b.align or opts.align, cfg.dims, b.channels[b.pick(s)], w)
                          for s, w in zip(self.feature_strides, widths))
            for b in self.branches)
        from flemme_core.registry import get_registry

        factory = get_registry().get("fusion", opts.fusion).load()
        self.fusions = nn.ModuleList()
        for w in widths:
            try:
                self.fusions.append(factory(w, len(self.branches), cfg.dims, **opts.fusion_options))
            except TypeError as exc:
                raise ConfigError(f"fusion {opts.fusion!r}: {exc}; check model.encoder.fusion_options") from None
        self.fusion_name = opts.fusion

        self.blocks = self._decoder_blocks(opts.decoder_family if opts.decoder_family is not None else
                                           opts.residual, cfg)
        fam = self.blocks.cfg
        if cfg.num_blocks is not None:
            num_blocks = cfg.num_blocks
        elif isinstance(fam.num_blocks, int):
            num_blocks = fam.num_blocks
        elif residual is not None and self.blocks is residual.encoder.blocks:
            # The decoder mirrors the residual branch level by level: its per-level block counts fit.
            first = self.picks[self.residual_index][0]
            num_blocks = list(fam.num_blocks[first:first + num_levels])
        else:
            num_blocks = 1
        self.config = dataclasses.replace(
            cfg, channels=widths, options=copy.deepcopy(cfg.options), num_blocks=num_blocks,
            patch_size=self.feature_strides[0], norm=cfg.norm or fam.norm, act=cfg.act or fam.act)
        self.backend = "mmfd(" + "+".join(f"{b.id}:{b.family}" for b in self.branches) + f"; {opts.fusion})"

    # -- build helpers -------------------------------------------------------------
    def _branch(self, name: str) -> Branch:
        for b in self.branches:
            if b.id == name:
                return b
        raise ConfigError(unknown_name_message("branch id", name, self.branch_ids,
                                               "give branches an id: or use finest / coarsest"))

    def _anchor_stride(self, anchor: Any) -> int:
        strides = [b.anchor_stride() for b in self.branches]
        if isinstance(anchor, int) and not isinstance(anchor, bool):
            value: float = anchor
        elif anchor == "finest":
            value = min(strides)
        elif anchor == "coarsest":
            value = max(strides)
        else:
            value = self._branch(str(anchor)).anchor_stride()
        if abs(value - round(value)) > 1e-6 or round(value) < 1:
            raise ConfigError(f"anchor stride {value:g} is not a whole number (a branch's input_size rescales "
                              f"it); give anchor as a fixed integer stride")
        return round(value)

    def _check_residual(self, branch: Branch) -> None:
        """The residual branch must supply every fused level natively (same stride, same width)."""
        for level, (stride, width) in enumerate(zip(self.feature_strides, self.feature_channels)):
            i = self.picks[self.residual_index][level]
            if abs(branch.strides[i] - stride) > 1e-6 or branch.channels[i] != width:
                raise ConfigError(
                    f"residual branch {branch.id!r} must supply every fused level as it is, but level {level} is "
                    f"stride {stride} width {width} and the branch gives stride {branch.strides[i]:g} width "
                    f"{branch.channels[i]}; leave channels unset (or use the branch's {branch.channels}) and "
                    f"anchor at the branch")

    def _decoder_blocks(self, spec: Any, cfg: EncoderConfig) -> BlockFamily:
        if spec is None:
            return self.branches[0].encoder.blocks
        if isinstance(spec, str):
            return self._branch(spec).encoder.blocks
        return registered_block_family(spec, cfg)

    # -- contract ------------------------------------------------------------------
    @property
    def supports_context(self) -> bool:  # type: ignore[override]
        """Every branch passes the context on: the fusion conditions all blocks only if they all do."""
        return all(b.encoder.supports_context for b in self.branches)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> list[torch.Tensor]:
        if x.dim() != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ShapeError(f"mmfd encoder expects (B, {self.in_channels}, {self.dims} spatial axes), "
                             f"got {tuple(x.shape)}")
        per_branch = [branch(x, context) for branch in self.branches]
        out = []
        for level, (stride, fusion) in enumerate(zip(self.feature_strides, self.fusions)):
            size = [s // stride for s in x.shape[2:]]
            aligned = [self.aligners[b][level](feats[self.picks[b][level]]) for b, feats in enumerate(per_branch)]
            if getattr(fusion, "native_grids", False):
                fused = fusion(aligned, size=size)
            else:
                fused = fusion([resample(a, size, self.options.resample) for a in aligned])
            if self.residual_index is not None:
                scale = self.residual_scales[level].view(1, -1, *[1] * self.dims)
                fused = per_branch[self.residual_index][self.picks[self.residual_index][level]] + scale * fused
            out.append(fused)
        return out

    def check_image_size(self, size: Sequence[int]) -> None:
        super().check_image_size(size)
        for b in self.branches:
            b.encoder.check_image_size(b.adapter.input_size or list(size))

    # -- introspection ---------------------------------------------------------------
    def components(self) -> list[tuple[str, str]]:
        """Registered components this encoder is made of (branch families and the fusion)."""
        return [("encoder", b.family) for b in self.branches] + [("fusion", self.fusion_name)]

    def standalone_config(self) -> dict[str, Any]:
        """The given config with every branch inlined (no checkpoint or weights paths)."""
        cfg = self.given
        spec = {k: getattr(cfg, k) for k in EncoderConfig.USER_KEYS if getattr(cfg, k) is not None}
        return {**spec, "options": {**cfg.options, "branches": [b.standalone_spec() for b in self.branches]}}

    def load_reports(self) -> dict[str, str]:
        return {b.id: b.report.summary() for b in self.branches if b.report is not None}

    def describe(self) -> list[dict[str, Any]]:
        """Per branch: family, strides, contributed levels, frozen, LoRA layers, trainable parameters."""
        return [{"id": b.id, "family": b.family, "channels": b.channels, "strides": b.strides,
                 "levels": b.levels, "frozen": b.frozen, "lora_layers": len(b.lora_layers),
                 "parameters": sum(p.numel() for p in b.parameters()),
                 "trainable": sum(p.numel() for p in b.parameters() if p.requires_grad)}
                for b in self.branches]
