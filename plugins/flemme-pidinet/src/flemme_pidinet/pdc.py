"""Pixel-difference convolutions (Su et al., "Pixel Difference Networks for Efficient Edge
Detection", ICCV 2021), written as kernel transforms.

Each PDC is linear in the input and in its 3×3 weights ``w``, so it equals a plain
convolution whose kernel is a fixed linear function of ``w``. Writing it that way gives
one code path for training (gradients flow through the transform) and for inference (the
transformed kernel is computed once: PiDiNet's "convert" trick):

* ``cv`` vanilla:   ``y = Σ_i w_i x_i``
* ``cd`` central:   ``y = Σ_i w_i (x_i − x_c)``  -> the 3×3 kernel with ``Σ w`` taken off its centre
* ``ad`` angular:   ``y = Σ_i w_i (x_i − x_{next(i)})``, next = the clockwise neighbour on the
  3×3 ring (the centre weight is unused) -> ``K_i = w_i − w_{prev(i)}``
* ``rd`` radial:    ``y = Σ_k w_{k+1} (x_{2d_k} − x_{d_k})`` over the 8 directions ``d_k`` in
  row-major order -> a 5×5 kernel, outer ring ``+w``, inner ring ``−w``. The official code
  reads the 8 weights as flat 3×3 positions 1..8 (position 0 is unused); kept so its
  checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPS = ("cv", "cd", "ad", "rd")

#: the 3×3 ring in clockwise order, as flat indices (row-major).
RING = (0, 1, 2, 5, 8, 7, 6, 3)
#: the eight directions (dy, dx) in row-major order (the centre skipped).
DIRECTIONS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def kernel_size(op: str) -> int:
    """Size of the plain convolution kernel a PDC is equivalent to (5 for ``rd``, else 3)."""
    return 5 if op == "rd" else 3


def pdc_kernel(op: str, weight: torch.Tensor) -> torch.Tensor:
    """The plain convolution kernel equal to PDC ``op`` with 3×3 ``weight`` (out, in/groups, 3, 3)."""
    if op not in OPS:
        raise ValueError(f"unknown pixel-difference convolution {op!r}; use one of {', '.join(OPS)}")
    if op == "cv":
        return weight
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"pixel-difference convolutions take 3×3 weights, got {tuple(weight.shape[-2:])}")
    flat = weight.flatten(2)
    if op == "cd":
        centre = torch.zeros_like(flat)
        centre[..., 4] = flat.sum(-1)
        return (flat - centre).view_as(weight)
    if op == "ad":
        ring = list(RING)
        previous = ring[-1:] + ring[:-1]
        out = torch.zeros_like(flat)
        out[..., ring] = flat[..., ring] - flat[..., previous]
        return out.view_as(weight)
    out = flat.new_zeros(*flat.shape[:2], 25)
    values = flat[..., 1:]  # the official layout: flat positions 1..8 hold the eight direction weights
    outer = [(2 + 2 * dy) * 5 + (2 + 2 * dx) for dy, dx in DIRECTIONS]
    inner = [(2 + dy) * 5 + (2 + dx) for dy, dx in DIRECTIONS]
    out[..., outer] = values
    out[..., inner] = -values
    return out.view(*flat.shape[:2], 5, 5)


def pdc_conv2d(x: torch.Tensor, weight: torch.Tensor, op: str, bias: torch.Tensor | None = None,
               stride: int = 1, dilation: int = 1, groups: int = 1) -> torch.Tensor:
    """PDC ``op`` with 'same' zero padding (pixels outside the image count as 0)."""
    kernel = pdc_kernel(op, weight)
    pad = dilation * (kernel.shape[-1] // 2)
    return F.conv2d(x, kernel, bias, stride=stride, padding=pad, dilation=dilation, groups=groups)
