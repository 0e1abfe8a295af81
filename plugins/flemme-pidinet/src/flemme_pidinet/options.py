"""Options of the ``pidinet`` family and the official layer configurations (``carv4`` ...)."""

from __future__ import annotations

import dataclasses
from typing import Any

from flemme_core.config import choice
from flemme_core.errors import ConfigError

from .pdc import OPS

#: width C of the first stage and CDCM width of the official variants (stages C, 2C, 4C, 4C).
VARIANTS = {"pidinet": (60, 24), "small": (30, 12), "tiny": (20, 8)}

#: the official layer configurations: (ops of the first layers, ops cycled over the rest).
#: A layer is the initial block or one residual block, in order.
NAMED_PDCS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "carv4": ((), ("cd", "ad", "rd", "cv")),
    "baseline": ((), ("cv",)),
    **{f"{o[0]}16": ((), (o,)) for o in ("cd", "ad", "rd")},
    **{f"{o[0]}vvv4": ((), (o, "cv", "cv", "cv")) for o in ("cd", "ad", "rd")},
    **{f"{o[0] * 3}v4": ((), (o, o, o, "cv")) for o in ("cd", "ad", "rd")},
    **{f"{o[0]}-v15": ((o,), ("cv",)) for o in ("cd", "ad", "rd")},
}
FEATURES = ("stages", "side", "concat")
NORMALIZE = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "none": None}


@dataclasses.dataclass
class PiDiNetOptions:
    """``model.encoder`` options of ``pidinet`` (common keys: ``channels`` = stage widths,
    default C, 2C, 4C, 4C of the variant; ``num_blocks`` = residual blocks per stage, default
    3, 4, 4, 4: with the initial block the 16 layers of the official network)."""

    variant: str = "pidinet"        # pidinet (C=60, CDCM 24) | small (30, 12) | tiny (20, 8)
    pdcs: Any = "carv4"             # an official configuration name, or one op (cv|cd|ad|rd) per layer
    dil: Any = True                 # CDCM in the side outputs: true (the variant's width), an int width, false
    sa: bool = True                 # CSAM spatial attention in the side outputs
    features: str = "stages"        # stages: the 4 stage outputs | side: after CDCM/CSAM | concat: side
                                    # outputs resized to the coarsest grid and concatenated (MMFD, one level)
    weights: str | None = None      # a local official checkpoint (.pth via weights_only, or .safetensors)
    convert: bool = False           # plain convolutions with the PDC kernels folded in (inference form)
    normalize: str = "imagenet"     # the input normalisation PiDiNet was trained with (images in [0, 1]) | none

    def validate(self) -> None:
        choice(self.variant, list(VARIANTS), "model.encoder.variant")
        choice(self.features, FEATURES, "model.encoder.features")
        choice(self.normalize, list(NORMALIZE), "model.encoder.normalize")
        if isinstance(self.pdcs, str):
            choice(self.pdcs, list(NAMED_PDCS), "model.encoder.pdcs")
        elif not (isinstance(self.pdcs, list) and self.pdcs and all(op in OPS for op in self.pdcs)):
            raise ConfigError(f"model.encoder.pdcs must name a configuration ({', '.join(NAMED_PDCS)}) or list "
                              f"one of {', '.join(OPS)} per layer, got {self.pdcs!r}")
        if not (isinstance(self.dil, bool) or (isinstance(self.dil, int) and self.dil > 0) or self.dil is None):
            raise ConfigError(f"model.encoder.dil must be true, false or a positive width, got {self.dil!r}")

    @property
    def dil_width(self) -> int | None:
        """CDCM output width, or None without CDCM."""
        if self.dil is True:
            return VARIANTS[self.variant][1]
        return None if self.dil in (False, None) else int(self.dil)


def layer_ops(pdcs: Any, num_layers: int) -> list[str]:
    """The op of every layer (initial block first) for a configuration name or list."""
    if isinstance(pdcs, list):
        if len(pdcs) != num_layers:
            raise ConfigError(f"model.encoder.pdcs lists {len(pdcs)} ops but the network has {num_layers} layers "
                              f"(the initial block + num_blocks); give {num_layers} or a configuration name")
        return list(pdcs)
    head, cycle = NAMED_PDCS[pdcs]
    rest = num_layers - len(head)
    return list(head[:num_layers]) + [cycle[i % len(cycle)] for i in range(max(0, rest))]


def decoder_ops(pdcs: Any) -> list[str]:
    """The ops a decoder cycles through: the configuration's repeating part."""
    return list(pdcs) if isinstance(pdcs, list) else list(NAMED_PDCS[pdcs][1])
