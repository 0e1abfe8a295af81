"""Options of the fusion encoder and of each branch, validated like every flemme config.

A branch is an ordinary encoder config (``name`` = family, its common keys and its own
options) plus the keys below, which belong to the fusion and never reach the family.
Unknown fusion keys are errors with close matches; family keys are checked by the family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flemme_core.config import EncoderConfig, choice, encoder_config_from_dict, parse_options
from flemme_core.errors import ConfigError
from flemme_core.lora import LoRAOptions

ALIGNS = ("mlp", "conv")
RESAMPLES = ("auto", "linear", "nearest", "area")
NORMALIZES = ("none", "zscore", "minmax")


@dataclasses.dataclass
class BranchOptions:
    """The fusion's own keys of one branch (everything else is the branch family's config)."""

    id: str | None = None               # name used by `anchor` and `decoder_family` (default: family[, index])
    checkpoint: str | None = None       # a flemme model checkpoint: its encoder config and weights
    weights: str | None = None          # foreign safetensors weights for the configured family
    key_map: Any = None                 # [[regex, replacement], ...] or {regex: replacement}; null drops a key
    prefix: str | None = None           # keep only keys under this prefix (default 'encoder.' for checkpoints)
    strict: bool = True                 # missing/unexpected/mismatched keys are an error (else a warning)
    freeze: bool = False                # no gradient into the branch (except its LoRA adapters)
    lora: Any = None                    # null, or {rank, alpha, targets}
    normalize: Any = "none"             # none | zscore | minmax | {mean: [...], std: [...]}
    levels: Any = "all"                 # all | last | [level indices] this branch contributes
    input_size: list[int] | None = None  # resize the image to this size before the branch
    in_channels: int | None = None      # the branch's input channels (1-channel images are repeated)
    align: str | None = None            # override of the encoder-wide channel alignment

    def validate(self) -> None:
        if self.lora is not None:
            self.lora = parse_options(LoRAOptions, self.lora or {}, "branch lora")
        if isinstance(self.normalize, str):
            choice(self.normalize, NORMALIZES, "branch normalize")
        elif isinstance(self.normalize, Mapping):
            extra = set(self.normalize) - {"mean", "std"}
            if extra or "mean" not in self.normalize or "std" not in self.normalize:
                raise ConfigError("branch normalize must be none, zscore, minmax or {mean: [...], std: [...]}")
        else:
            raise ConfigError(f"branch normalize must be a name or {{mean, std}}, got {self.normalize!r}")
        if isinstance(self.levels, str):
            choice(self.levels, ["all", "last"], "branch levels")
        elif not (isinstance(self.levels, list) and self.levels and all(isinstance(i, int) for i in self.levels)):
            raise ConfigError(f"branch levels must be all, last or a list of level indices, got {self.levels!r}")
        if self.align is not None:
            choice(self.align, ALIGNS, "branch align")
        if self.weights and self.checkpoint:
            raise ConfigError("a branch takes either checkpoint (a flemme model) or weights (foreign), not both")


BRANCH_KEYS = [f.name for f in dataclasses.fields(BranchOptions)]
#: keys that only say where initial weights come from (not part of the built structure).
FILE_KEYS = ("checkpoint", "weights", "key_map", "prefix", "strict")


@dataclasses.dataclass
class FusionEncoderOptions:
    """``model.encoder`` options of ``mmfd`` (``channels`` gives the fused widths per level)."""

    branches: list[Any] = dataclasses.field(default_factory=list)
    fusion: str = "sum"                 # any registered fusion strategy (flemme list fusions)
    fusion_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    anchor: Any = None                  # finest | coarsest | a branch id | a fixed stride (default: the
                                        # residual branch if set, else finest)
    residual: str | None = None         # a branch id whose own features pass through; the fusion is added
                                        # with a zero-initialised scale (the encoder starts as that branch)
    align: str = "mlp"                  # mlp (LayerNorm -> Linear -> GELU -> Linear) | conv (1×1)
    resample: str = "auto"              # auto (area down, linear up) | linear | nearest | area
    decoder_family: Any = None          # a branch id, or a family config {name: cnn, ...}; default: the
                                        # residual branch, else branch 0

    def validate(self) -> None:
        if not isinstance(self.branches, list) or not self.branches:
            raise ConfigError("model.encoder.branches must list at least one encoder, e.g. "
                              "[{name: cnn}, {name: swin}]")
        choice(self.align, ALIGNS, "model.encoder.align")
        choice(self.resample, RESAMPLES, "model.encoder.resample")
        if self.anchor is None:
            self.anchor = self.residual or "finest"
        if not (isinstance(self.anchor, str) or (isinstance(self.anchor, int) and self.anchor > 0)):
            raise ConfigError(f"model.encoder.anchor must be finest, coarsest, a branch id or a positive "
                              f"stride, got {self.anchor!r}")


def split_branch(spec: Any, index: int) -> tuple[BranchOptions, dict[str, Any]]:
    """One branch entry -> (fusion keys, the family's encoder config mapping)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"model.encoder.branches[{index}] must be a family name or a mapping, got {spec!r}")
    spec = dict(spec)
    ours = {k: spec.pop(k) for k in list(spec) if k in BRANCH_KEYS}
    opts = parse_options(BranchOptions, ours, f"model.encoder.branches[{index}]")
    if "name" not in spec and not opts.checkpoint:
        raise ConfigError(f"model.encoder.branches[{index}] needs a family name (name: cnn) or a checkpoint")
    return opts, spec


def branch_encoder_config(family: Mapping[str, Any], base: Mapping[str, Any] | None) -> EncoderConfig:
    """The branch's family config: a checkpoint's encoder config overlaid by the branch's own keys."""
    merged = dict(base or {})
    for key, value in family.items():
        if key == "options":
            merged["options"] = {**merged.get("options", {}), **value}
        else:
            merged[key] = value
    return encoder_config_from_dict(merged)
