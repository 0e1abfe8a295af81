"""Core losses, built on MONAI, and the weighted combination a config describes.

Conventions every loss follows, so any architecture can use any loss:
segmentation predictions are logits ``(B, C, *S)``; targets are class indices
``(B, 1, *S)`` (one channel: binary, sigmoid; several: softmax with one-hot targets).
Reconstruction predictions and targets are images of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .config import normalize_loss_spec
from .errors import ConfigError


def _seg_args(out_channels: int) -> dict[str, Any]:
    if out_channels == 1:
        return {"sigmoid": True}
    return {"softmax": True, "to_onehot_y": True}


def dice(out_channels: int, dims: int, **options: Any) -> nn.Module:
    from monai.losses import DiceLoss

    return DiceLoss(**{**_seg_args(out_channels), **options})


def dice_ce(out_channels: int, dims: int, **options: Any) -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(**{**_seg_args(out_channels), **options})


class _CrossEntropy(nn.Module):
    """Cross-entropy on class-index targets ``(B, 1, *S)``; BCE when there is one channel."""

    def __init__(self, out_channels: int, **options: Any):
        super().__init__()
        self.binary = out_channels == 1
        self.loss = nn.BCEWithLogitsLoss(**options) if self.binary else nn.CrossEntropyLoss(**options)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return self.loss(pred, target.to(pred.dtype))
        if target.dim() == pred.dim():
            target = target[:, 0]
        return self.loss(pred, target.long())


def ce(out_channels: int, dims: int, **options: Any) -> nn.Module:
    return _CrossEntropy(out_channels, **options)


class _BCE(nn.Module):
    """BCE-with-logits on per-channel binary targets of the prediction's shape."""

    def __init__(self, **options: Any):
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss(**options)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(pred, target.to(pred.dtype))


def bce(out_channels: int, dims: int, **options: Any) -> nn.Module:
    return _BCE(**options)


def mse(out_channels: int, dims: int, **options: Any) -> nn.Module:
    return nn.MSELoss(**options)


def l1(out_channels: int, dims: int, **options: Any) -> nn.Module:
    return nn.L1Loss(**options)


def ssim(out_channels: int, dims: int, **options: Any) -> nn.Module:
    """1 - SSIM (MONAI); images are expected in [0, data_range]."""
    from monai.losses import SSIMLoss

    options.setdefault("data_range", 1.0)
    return SSIMLoss(spatial_dims=dims, **options)


class WeightedLoss(nn.Module):
    """Σ w_k · L_k(prediction, target); remembers the last terms for logging."""

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(weights)
        self.last: dict[str, float] = {}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | float = 0.0
        last = {}
        for key, term in self.terms.items():
            value = term(pred, target)
            last[key] = float(value.detach())
            total = total + self.weights[key] * value
        self.last = last
        return total  # type: ignore[return-value]


def build_loss(spec: Any, out_channels: int, dims: int) -> WeightedLoss:
    """Build the weighted loss a config names; unknown names and options are one-line errors."""
    from .registry import get_registry

    registry = get_registry()
    terms, weights = {}, {}
    for i, item in enumerate(normalize_loss_spec(spec)):
        options = {k: v for k, v in item.items() if k not in ("name", "weight")}
        factory: Callable[..., nn.Module] = registry.get("loss", item["name"]).load()
        try:
            module = factory(out_channels=out_channels, dims=dims, **options)
        except TypeError as exc:
            raise ConfigError(f"loss {item['name']!r}: {exc}; check its options") from None
        key = item["name"] if item["name"] not in terms else f"{item['name']}_{i}"
        terms[key], weights[key] = module, float(item["weight"])
    if not terms:
        raise ConfigError("model.loss is empty; name at least one loss, e.g. dice_ce")
    return WeightedLoss(terms, weights)
