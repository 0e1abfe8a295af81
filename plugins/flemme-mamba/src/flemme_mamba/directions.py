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
    """Split ``(B, C, *S)`` into ``(B, K, C, L)`` sequences and merge ``(B, K, C, L)`` back to ``(B, C, L)``.

    Directions are ordered as :func:`scan_orders` gives them: every axis order, then (with
    ``+flip``) every axis order reversed, so one flip of the second half serves them all.
    """

    def __init__(self, dims: int, mode: str):
        self.dims = dims
        self.orders = scan_orders(dims, mode)
        self.perms = [p for p, flipped in self.orders if not flipped]
        self.flip = len(self.orders) > len(self.perms)

    def __len__(self) -> int:
        return len(self.orders)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        seqs = torch.stack([x.permute(0, 1, *[2 + p for p in perm]).flatten(2) for perm in self.perms], dim=1)
        return torch.cat([seqs, seqs.flip(-1)], dim=1) if self.flip else seqs

    def merge(self, y: torch.Tensor, spatial: tuple[int, ...] | torch.Size) -> torch.Tensor:
        b, _, c, _ = y.shape
        n = len(self.perms)
        if self.flip:  # un-flip the reversed half and add it to its axis order
            y = y[:, :n] + y[:, n:].flip(-1)
        out = None
        for k, perm in enumerate(self.perms):
            s = y[:, k]
            if list(perm) != sorted(perm):  # un-permute back to raster order
                s = s.reshape(b, c, *[spatial[p] for p in perm])
                inverse = [perm.index(i) for i in range(self.dims)]
                s = s.permute(0, 1, *[2 + i for i in inverse]).reshape(b, c, -1)
            out = s if out is None else out + s
        assert out is not None
        return out
