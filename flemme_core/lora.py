"""Low-rank adapters (LoRA) for the linear and convolution layers of a (frozen) branch.

``y = W x + (alpha / rank) · B(A(x))`` with ``B`` zero-initialised, so wrapping a layer
changes nothing until training moves ``B``; the wrapped layer's own weights stay frozen.
For a convolution, ``A`` is a convolution with the layer's kernel, stride, padding and
dilation to ``rank`` channels and ``B`` a 1×1 convolution back, so shapes always match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from flemme_core.errors import ConfigError

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


class LoRAConv(nn.Module):
    """A frozen convolution plus a trainable rank-``r`` update (same geometry, any dims)."""

    def __init__(self, base: nn.Conv1d | nn.Conv2d | nn.Conv3d, rank: int, alpha: float):
        super().__init__()
        self.base = base
        conv = type(base)
        self.lora_a = conv(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                           dilation=base.dilation, groups=1, bias=False, padding_mode=base.padding_mode)
        self.lora_b = conv(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


def _wanted(name: str, layer: nn.Module, targets: Sequence[str]) -> bool:
    for target in targets:
        if target == "linear" and isinstance(layer, nn.Linear):
            return True
        if target == "conv" and isinstance(layer, CONVS):
            return True
        if target not in ("linear", "conv") and re.search(target, name) and isinstance(layer, (nn.Linear, *CONVS)):
            return True
    return False


def add_lora(module: nn.Module, rank: int, alpha: float, targets: Sequence[str]) -> list[str]:
    """Wrap every matching layer of ``module`` in place; returns the wrapped layer names.

    ``targets``: ``linear``, ``conv``, or regular expressions searched in layer names
    (e.g. ``attn.qkv`` for MMFD's LoRA on q/v). Matching nothing is an error.
    """
    chosen = [(name, layer) for name, layer in module.named_modules()
              if name and _wanted(name, layer, targets) and not isinstance(layer, (LoRALinear, LoRAConv))
              and ".lora_" not in f".{name}"]
    if not chosen:
        raise ConfigError(f"lora.targets {list(targets)} match no linear/conv layer of this branch; "
                          f"use linear, conv, or a regex of its layer names")
    for name, layer in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        wrapped = LoRALinear(layer, rank, alpha) if isinstance(layer, nn.Linear) else LoRAConv(layer, rank, alpha)
        setattr(parent, attr, wrapped)
    return [name for name, _ in chosen]


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapters' own parameters (what stays trainable in a frozen branch)."""
    return [p for m in module.modules() if isinstance(m, (LoRALinear, LoRAConv))
            for p in (*m.lora_a.parameters(), *m.lora_b.parameters())]
