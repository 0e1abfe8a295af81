"""Scan directions: how a 2D/3D feature map becomes K token sequences and back.

A direction is an order of the spatial axes (raster order over that permutation) and
whether the sequence runs backwards. ``single`` is the raster order; ``cross`` every
axis order (2 in 2D, 6 in 3D); ``+flip`` adds each one reversed (``cross+flip`` in 2D
is VMamba's 4-way SS2D). :meth:`Directions.merge` undoes the flip and the permutation
of every direction before summing, so position p of the output always belongs to
position p of the input.
"""

from __future__ import annotations

import itertools

import torch

SCAN_MODES = ("single", "single+flip", "cross", "cross+flip")


def scan_orders(dims: int, mode: str) -> list[tuple[tuple[int, ...], bool]]:
    """(axis permutation, reversed) for every direction of ``mode``, unflipped ones first."""
    base, _, flip = mode.partition("+")
    identity = tuple(range(dims))
    perms = [identity] if base == "single" else list(itertools.permutations(identity))
    orders = [(p, False) for p in perms]
    if flip == "flip":
        orders += [(p, True) for p in perms]
    return orders


class Directions:
    """Split ``(B, C, *S)`` into ``(B, K, C, L)`` sequences and merge ``(B, K, C, L)`` back to ``(B, C, L)``."""

    def __init__(self, dims: int, mode: str):
        self.dims = dims
        self.orders = scan_orders(dims, mode)

    def __len__(self) -> int:
        return len(self.orders)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        seqs = []
        for perm, flipped in self.orders:
            s = x.permute(0, 1, *[2 + p for p in perm]).flatten(2)
            seqs.append(s.flip(-1) if flipped else s)
        return torch.stack(seqs, dim=1)

    def merge(self, y: torch.Tensor, spatial: tuple[int, ...] | torch.Size) -> torch.Tensor:
        b, _, c, _ = y.shape
        out = None
        for k, (perm, flipped) in enumerate(self.orders):
            s = y[:, k].flip(-1) if flipped else y[:, k]
            s = s.reshape(b, c, *[spatial[p] for p in perm])
            inverse = [perm.index(i) for i in range(self.dims)]
            s = s.permute(0, 1, *[2 + i for i in inverse]).reshape(b, c, -1)
            out = s if out is None else out + s
        assert out is not None
        return out
