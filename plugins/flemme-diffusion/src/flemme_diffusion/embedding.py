"""The context vector of a diffusion network: time (and optionally a class) -> ``context_dim``.

Flemme conditions every block through the encoder contract's
:class:`~flemme_core.encoder.ContextInjection` (``x * (1 + W_g c) + W_b c``); this module
only produces ``c``: a sinusoidal embedding of the timestep (or of EDM's ``c_noise``)
through two dense layers, plus a learned class embedding whose last row is the "no
class" token that classifier-free guidance uses.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flemme_core.errors import ShapeError


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style features ``[cos(t w_k), sin(t w_k)]`` of a (possibly fractional) time."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class ContextEmbedding(nn.Module):
    """timestep -> sinusoid -> Linear -> SiLU -> Linear (+ class embedding) -> SiLU.

    ``labels`` follow MONAI's classifier-free-guidance convention: a float or integer
    tensor of class indices, where any negative value (MONAI fills the unconditional half
    with -1) selects the learned "no class" row.
    """

    def __init__(self, context_dim: int, freq_dim: int = 64, num_classes: int = 0):
        super().__init__()
        self.freq_dim = freq_dim
        self.num_classes = num_classes
        self.time = nn.Sequential(nn.Linear(freq_dim, context_dim), nn.SiLU(), nn.Linear(context_dim, context_dim))
        self.classes = nn.Embedding(num_classes + 1, context_dim) if num_classes else None
        self.out = nn.SiLU()

    def forward(self, timesteps: torch.Tensor, batch: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(timesteps).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ShapeError(f"got {t.numel()} timesteps for a batch of {batch}; give one per sample or one for all")
        c = self.time(sinusoidal(t, self.freq_dim))
        if self.classes is not None:
            c = c + self.classes(self.class_index(labels, batch, c.device))
        elif labels is not None:
            raise ShapeError("this model was trained without classes (num_classes: 0); sample it without a condition")
        return self.out(c)

    def class_index(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Class indices as long, negative or missing -> the "no class" row."""
        null = self.num_classes
        if labels is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        idx = torch.as_tensor(labels, device=device).reshape(labels.shape[0], -1)
        if idx.shape[1] != 1 or idx.shape[0] != batch:
            raise ShapeError(f"class condition must hold one class index per sample ({batch}), got shape "
                             f"{tuple(labels.shape)}")
        idx = idx[:, 0].round().long()
        if (idx >= null).any():
            raise ShapeError(f"class index {int(idx.max())} is out of range; this model knows classes 0..{null - 1}")
        return torch.where(idx < 0, torch.full_like(idx, null), idx)
