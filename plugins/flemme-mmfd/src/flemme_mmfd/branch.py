"""One branch of the fusion encoder: a registered encoder with its own input view and weights."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from flemme_core.config import EncoderConfig
from flemme_core.errors import CheckpointError, ConfigError
from flemme_core.lora import add_lora
from flemme_core.weights import LoadReport, load_into, read_safetensors, remap_keys

from .align import InputAdapter
from .options import BRANCH_KEYS, FILE_KEYS, BranchOptions, branch_encoder_config


class Branch(nn.Module):
    """``adapter`` (normalise, channels, size) -> ``encoder`` (any family), optionally frozen + LoRA.

    ``strides`` are the branch's level strides measured on the fused encoder's input
    (they differ from the family's own when ``input_size`` resizes the image).
    """

    def __init__(self, index: int, opts: BranchOptions, family: dict[str, Any], parent: EncoderConfig):
        super().__init__()
        from flemme_core.build import build_encoder

        base, ckpt_in = None, None
        self.source_arch: str | None = None  # the architecture of the checkpoint (its decoder can seed one)
        if opts.checkpoint:
            from flemme_core.checkpoint import read_metadata

            meta = read_metadata(opts.checkpoint)
            base, ckpt_in = meta["config"]["encoder"], meta["config"].get("in_channels")
            self.source_arch = meta["config"]["arch"]
            if meta["config"].get("dims", parent.dims) != parent.dims:
                raise ConfigError(f"branch {index}: checkpoint {opts.checkpoint!r} is a "
                                  f"{meta['config']['dims']}D model but this model is {parent.dims}D")
        cfg = inherit_common_keys(branch_encoder_config(family, base), family, parent, from_checkpoint=base is not None)
        in_channels = opts.in_channels or ckpt_in or parent.in_channels
        if in_channels != parent.in_channels and parent.in_channels != 1:
            raise ConfigError(f"branch {index} takes {in_channels} input channels but images have "
                              f"{parent.in_channels}; only 1-channel images are repeated to fit")
        size = list(opts.input_size or parent.image_size)
        if len(size) == 1:
            size = size * parent.dims
        if len(size) != parent.dims:
            raise ConfigError(f"branch {index} input_size {size} must have {parent.dims} values")
        cfg = dataclasses.replace(cfg, dims=parent.dims, in_channels=in_channels, image_size=size,
                                  context_dim=parent.context_dim)
        self.id = opts.id or cfg.name
        self.family = cfg.name
        self.opts, self.family_config, self.in_channels = opts, cfg, in_channels
        try:
            self.encoder = build_encoder(cfg)
        except ConfigError as exc:
            raise ConfigError(f"model.encoder.branches[{index}] ({cfg.name}): {exc}"
                              f"{_fusion_key_hint(family, str(exc))}") from None
        self.encoder.check_image_size(size)
        if isinstance(opts.normalize, dict) and len(opts.normalize["mean"]) not in (1, in_channels):
            raise ConfigError(f"branch {self.id}: normalize.mean has {len(opts.normalize['mean'])} values for "
                              f"{in_channels} channels")
        self.adapter = InputAdapter(opts.normalize, parent.in_channels, in_channels, opts.input_size)
        self.report: LoadReport | None = None
        path = opts.checkpoint or opts.weights
        if path:
            prefix = opts.prefix if opts.prefix is not None else ("encoder." if opts.checkpoint else None)
            try:
                tensors, _ = read_safetensors(path, (lambda k: k.startswith(prefix)) if prefix else None)
            except CheckpointError as exc:
                raise CheckpointError(f"branch {self.id}: {exc}; a family that reads published checkpoints itself "
                                      f"(sam, clip, timm, pidinet) takes the file as its own option: "
                                      f"branches[{index}].options: {{weights: {path}}}") from None
            state = remap_keys(tensors, opts.key_map, prefix)
            self.report = load_into(self.encoder, state, f"branch {self.id} <- {path}", strict=opts.strict)
        self.frozen = bool(opts.freeze)
        if self.frozen:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.lora_layers: list[str] = []
        if opts.lora is not None:
            self.lora_layers = add_lora(self.encoder, opts.lora.rank, opts.lora.alpha, opts.lora.targets)
        scales = [p / s for p, s in zip(parent.image_size, size)]
        if max(scales) - min(scales) > 1e-6:
            raise ConfigError(f"branch {self.id}: input_size {size} rescales the axes of {parent.image_size} "
                              f"unequally; keep the aspect ratio")
        self.strides = [s * scales[0] for s in self.encoder.feature_strides]
        levels = opts.levels
        n = len(self.strides)
        if levels == "all":
            self.levels = list(range(n))
        elif levels == "last":
            self.levels = [n - 1]
        else:
            if any(not -n <= i < n for i in levels):
                raise ConfigError(f"branch {self.id} levels {levels} out of range: it has {n} levels")
            self.levels = sorted({i % n for i in levels})
        self.align = opts.align

    def standalone_spec(self) -> dict[str, Any]:
        """This branch's entry with the family config it read from its checkpoint inlined and
        no file paths: the structure without the files (a checkpoint holds the weights)."""
        fusion = {k: v for k, v in dataclasses.asdict(self.opts).items() if k not in FILE_KEYS and v is not None}
        cfg = self.family_config
        # Every common key explicit (unset ones as null): the reload builds this structure, whatever
        # the fused encoder's own keys would pass down to a branch that leaves them unset.
        family = {k: getattr(cfg, k) for k in EncoderConfig.USER_KEYS}
        options = dict(cfg.options)
        own = self.encoder.standalone_config()  # a family that read its own files (options.weights) drops them
        if own is not None:
            family.update({k: v for k, v in own.items() if k != "options"})
            options = dict(own.get("options", {}))
        return {**family, "options": options, **fusion, "id": self.id, "in_channels": self.in_channels}

    @property
    def channels(self) -> list[int]:
        return self.encoder.feature_channels

    def anchor_stride(self) -> float:
        """The finest stride this branch contributes."""
        return min(self.strides[i] for i in self.levels)

    def pick(self, stride: float) -> int:
        """The contributed level nearest ``stride`` (in log scale; ties go to the finer level)."""
        return min(self.levels, key=lambda i: (abs(math.log2(self.strides[i] / stride)), self.strides[i]))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = self.adapter(x)
        if self.frozen and not self.lora_layers:
            with torch.no_grad():
                return self.encoder(x, context)
        return self.encoder(x, context)

    def train(self, mode: bool = True) -> Branch:
        """A frozen branch keeps its normalisation statistics: it stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self


#: common keys a branch takes from the fusion encoder's config when it does not set its own.
INHERITED = ("channels", "norm", "act", "dropout", "drop_path")


def inherit_common_keys(cfg: EncoderConfig, family: dict[str, Any], parent: EncoderConfig,
                        from_checkpoint: bool) -> EncoderConfig:
    """A common key given to the fusion encoder reaches every branch that does not set it
    itself (``--channels 8,16`` makes 8-16 branches, and so 8-16 fused levels), never shown and
    ignored. A branch read from a checkpoint keeps its trained structure (channels, norm, act:
    the fused levels are aligned to it); only the regularisers (dropout, drop_path) reach it."""
    changes: dict[str, Any] = {}
    for key in INHERITED:
        value = getattr(parent, key)
        if value in (None, 0.0) or key in family or (from_checkpoint and key in ("channels", "norm", "act")):
            continue
        changes[key] = list(value) if isinstance(value, list) else value
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _fusion_key_hint(family: dict[str, Any], error: str) -> str:
    """A misspelt fusion key (``frezee``) reaches the family as an unknown option: name the right one
    (only for the key the family refused, never for a valid encoder key such as ``channels``)."""
    import difflib

    for key in family:
        if key in EncoderConfig.USER_KEYS or repr(str(key)) not in error:
            continue
        close = difflib.get_close_matches(str(key), BRANCH_KEYS, n=1, cutoff=0.75)
        if close:
            return f"; if {key!r} was meant for the fusion, did you mean {close[0]!r}?"
    return ""
