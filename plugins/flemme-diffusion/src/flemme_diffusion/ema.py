"""Exponential moving average of a model's trainable weights, stored as buffers.

Why inside the architecture: the trainer knows nothing about generative models, and
diffusion samples are much better from averaged weights. The architecture calls
:meth:`EMA.update` at the start of every training step (so the average trails the
optimiser by one step, which is negligible), the shadows travel in the checkpoint as
ordinary buffers, and :meth:`EMA.swapped` puts them in place while sampling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA(nn.Module):
    """Shadows of the named parameters, updated with a warm-up decay min(decay, (1+n)/(10+n))."""

    def __init__(self, named: list[tuple[str, nn.Parameter]], decay: float):
        super().__init__()
        self.decay = decay
        self.names = [name for name, _ in named]
        self._params = [p for _, p in named]  # plain list: not registered twice
        for name, p in named:
            self.register_buffer(self._key(name), p.detach().clone())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _key(name: str) -> str:
        return "shadow__" + name.replace(".", "__")

    def shadows(self) -> list[torch.Tensor]:
        return [getattr(self, self._key(n)) for n in self.names]

    @torch.no_grad()
    def update(self) -> None:
        n = int(self.num_updates)
        decay = min(self.decay, (1 + n) / (10 + n))
        shadows = self.shadows()
        params = [p.detach().to(s.dtype) for p, s in zip(self._params, shadows)]
        torch._foreach_lerp_(shadows, params, 1.0 - decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Use the averaged weights inside the block (a no-op before the first update)."""
        if int(self.num_updates) == 0:
            yield
            return
        saved = [p.detach().clone() for p in self._params]
        with torch.no_grad():
            for p, s in zip(self._params, self.shadows()):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self._params, saved):
                    p.copy_(s)
