"""The parts of ``selective_scan_fn``'s contract that every scan implementation shares.

Each implementation (the reference loop, the chunked PyTorch scan, the export scan) solves
the recurrence its own way, but they all read their inputs and finish their output the
same way; keeping that here means the implementations cannot drift apart on it. Plain
tensor operations only, so the export scan stays traceable by torch.onnx / torch.export.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class ScanSizes(NamedTuple):
    """Sizes of one scan call: u is ``(batch, channels, length)``, its channels split in ``groups``."""

    batch: int
    channels: int
    length: int
    groups: int
    n: int      # state size N
    per: int    # channels per group


def scan_inputs(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                delta_bias: torch.Tensor | None, delta_softplus: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ScanSizes]:
    """``delta`` with its bias and softplus applied, ``B``/``C`` as ``(batch, G, N, L)``, and the sizes."""
    batch, channels, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    groups, n = B.shape[1], A.shape[1]
    return delta, B, C, ScanSizes(batch, channels, length, groups, n, channels // groups)


def scan_output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``y + D u``, gated by ``silu(z)``: what follows the recurrence in every implementation."""
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y
