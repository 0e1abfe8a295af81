"""The pyramid loss: deep supervision of a fused output and of every level's prediction.

For predictions ``[fused, h_1, ..., h_n]`` (fused at full resolution first, then the
levels at their native resolution, fine to coarse, the convention nnU-Net uses) and any
criterion ``L`` (usually flemme's weighted sum of the configured losses)::

    loss = L(fused, y) + pyramid_weight * Σ_i λ_i · L(h_i, resize_i(y))

Because ``L = Σ_k w_k L_k`` is linear in its terms this equals Flemme's
``Σ_k w_k [L_k(fused, y) + Σ_i λ_i L_k(h_i, y_i)]``. Level weights ``λ``:

* ``equal`` (Flemme): ``1/n`` each, the mean over levels;
* ``halving`` (nnU-Net): ``1/2^i`` fine to coarse, the coarsest set to 0, normalised to 1.

Built on MONAI's :class:`~monai.losses.DeepSupervisionLoss` (which owns the loop) by
overriding its two extension points: :meth:`PyramidLoss.get_weights` (MONAI's ``exp``
weights are ``max(0.5^l, 0.0625)`` and not normalised, and they would weigh the fused
output like a level) and :meth:`PyramidLoss.get_loss` (MONAI resizes every target with
nearest interpolation, which is wrong for images and biased for masks, see
:func:`resize_target`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss
from torch import nn

from flemme_core.config import choice
from flemme_core.errors import ConfigError, ShapeError

LEVEL_WEIGHTS = ("equal", "halving")
#: how targets are brought to a level's size, per kind of target.
LABEL_RESIZE = ("majority", "nearest")
IMAGE_RESIZE = ("area", "linear", "nearest")


def level_weights(mode: str, num_levels: int) -> list[float]:
    """Weights of the ``num_levels`` level losses, fine to coarse, summing to 1."""
    choice(mode, LEVEL_WEIGHTS, "level_weights")
    if num_levels <= 0:
        return []
    if mode == "equal":
        return [1.0 / num_levels] * num_levels
    raw = [0.5 ** i for i in range(num_levels)]
    if num_levels > 1:
        raw[-1] = 0.0  # nnU-Net: the coarsest output is too coarse to supervise
    total = sum(raw)
    return [w / total for w in raw]


def _is_one_hot(target: torch.Tensor) -> bool:
    return bool(torch.all((target == 0) | (target == 1))) and bool(torch.all(target.sum(1) == 1))


def resize_target(target: torch.Tensor, size: Sequence[int], kind: str, mode: str,
                  num_classes: int) -> torch.Tensor:
    """The target at a level's spatial ``size``.

    Labels (``kind='labels'``):

    * ``majority`` (default): each coarse voxel takes the class covering most of the
      fine voxels under it (area-average of the one-hot mask, then argmax; a binary
      mask: average > 0.5, so a tie goes to background like argmax's). Nearest
      interpolation instead keeps one fine voxel of each block, off-centre by half a
      fine voxel at every level; at 1/16 scale it reads 1 voxel of 256, so small
      structures appear or vanish at random. The majority label is centred and
      reflects what the block contains.
    * ``nearest``: Flemme's choice, kept for comparison.

    Class-index targets ``(B, 1, *S)`` stay class indices (binary when
    ``num_classes == 1``); multi-channel targets stay multi-channel (one-hot masks by
    majority over channels, multi-label masks channel by channel).

    Images (``kind='image'``): ``area`` (default; the mean of each block, what a
    coarser acquisition would see, without aliasing), ``linear`` or ``nearest``.
    """
    size = list(size)
    if list(target.shape[2:]) == size:
        return target
    dims = target.dim() - 2
    if kind == "image":
        choice(mode, IMAGE_RESIZE, "target_resize (images)")
        if mode == "linear":
            return F.interpolate(target.float(), size=size, mode="bilinear" if dims == 2 else "trilinear",
                                 align_corners=False)
        return F.interpolate(target.float(), size=size, mode=mode)
    choice(mode, LABEL_RESIZE, "target_resize (labels)")
    if mode == "nearest":
        return F.interpolate(target.float(), size=size, mode="nearest").to(target.dtype)
    if target.shape[1] == 1:
        if num_classes == 1:  # binary mask for a sigmoid output
            frac = F.interpolate(target.float(), size=size, mode="area")
            return (frac > 0.5).to(target.dtype)
        one_hot = F.one_hot(target[:, 0].long(), num_classes).movedim(-1, 1).float()
        frac = F.interpolate(one_hot, size=size, mode="area")
        return frac.argmax(1, keepdim=True).to(target.dtype)
    frac = F.interpolate(target.float(), size=size, mode="area")
    if _is_one_hot(target):
        idx = frac.argmax(1)
        return F.one_hot(idx, target.shape[1]).movedim(-1, 1).to(target.dtype)
    return (frac > 0.5).to(target.dtype)


class PyramidLoss(DeepSupervisionLoss):
    """``criterion(fused, y) + pyramid_weight * Σ_i λ_i criterion(h_i, y_i)``.

    ``forward(outputs, target)`` takes the list ``[fused, h_1 (finest), ..., h_n
    (coarsest)]``; a single tensor is passed to the criterion unchanged, so the loss
    also works for architectures with one output. ``last`` holds each term's value of
    the latest call, for logging.
    """

    def __init__(self, criterion: nn.Module, level_weights: str = "equal", pyramid_weight: float = 1.0,
                 target: str = "labels", target_resize: str | None = None):
        super().__init__(criterion, weight_mode="same")
        choice(level_weights, LEVEL_WEIGHTS, "level_weights")
        choice(target, ("labels", "image"), "pyramid target")
        resize = target_resize or ("majority" if target == "labels" else "area")
        choice(resize, LABEL_RESIZE if target == "labels" else IMAGE_RESIZE, f"target_resize ({target})")
        if not isinstance(pyramid_weight, (int, float)) or pyramid_weight < 0:
            raise ConfigError(f"pyramid_weight must be a non-negative number, got {pyramid_weight!r}")
        self.level_mode = level_weights
        self.pyramid_weight = float(pyramid_weight)
        self.target_kind = target
        self.target_resize = resize
        self.last: dict[str, float] = {}
        self._terms: list[float] = []
        self._weights: list[float] = []
        self._per_loss: dict[str, float] = {}

    def get_weights(self, levels: int = 1) -> list[float]:
        """Weight 1 for the fused output, then ``pyramid_weight * λ_i`` for each level."""
        levels = max(1, levels)
        return [1.0] + [self.pyramid_weight * w for w in level_weights(self.level_mode, levels - 1)]

    def get_loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() != target.dim():
            raise ShapeError(f"pyramid loss: prediction {tuple(input.shape)} and target {tuple(target.shape)} "
                             f"have different ranks; targets must be (B, C, *spatial)")
        target = resize_target(target, input.shape[2:], self.target_kind, self.target_resize, input.shape[1])
        value = self.loss(input, target)
        weight = self._weights[len(self._terms)] if len(self._terms) < len(self._weights) else 1.0
        for key, term in getattr(self.loss, "last", {}).items():  # per configured loss, pyramid-weighted
            self._per_loss[key] = self._per_loss.get(key, 0.0) + weight * term
        self._terms.append(float(value.detach()))
        return value

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The loss; afterwards ``last`` holds every level's value, and the wrapped criterion's
        ``last`` (flemme's per-loss log) holds each configured loss summed over the pyramid."""
        many = isinstance(input, (list, tuple))
        self._terms, self._per_loss = [], {}
        self._weights = self.get_weights(len(input)) if many else [1.0]
        total = super().forward(input, target)
        if many:
            names = ["loss_fused"] + [f"loss_level{i}_{'x'.join(map(str, o.shape[2:]))}"
                                      for i, o in enumerate(input[1:], start=1)]
            self.last = {**dict(zip(names, self._terms)), "loss": float(total.detach())}
            if self._per_loss and isinstance(getattr(self.loss, "last", None), dict):
                self.loss.last = dict(self._per_loss)
        else:
            self.last = {"loss": float(total.detach())}
        return total


def pyramid(out_channels: int, dims: int, losses: Any = "dice_ce", level_weights: str = "equal",
            pyramid_weight: float = 1.0, target: str = "labels", target_resize: str | None = None) -> PyramidLoss:
    """The registered ``pyramid`` loss: ``{name: pyramid, losses: [dice, ce], level_weights: halving}``.

    For configs that name deep supervision directly (any architecture returning the
    ``[fused, levels fine to coarse]`` list); ``hunet``/``hae`` wrap their losses
    themselves and use this one as is when a config names it.
    """
    from flemme_core.losses import build_loss

    if losses == "pyramid" or (isinstance(losses, (list, tuple)) and "pyramid" in losses):
        raise ConfigError("loss 'pyramid' cannot wrap itself; name the losses to apply, e.g. losses: [dice_ce]")
    inner = build_loss(losses, out_channels, dims)
    return PyramidLoss(inner, level_weights=level_weights, pyramid_weight=pyramid_weight, target=target,
                       target_resize=target_resize)
