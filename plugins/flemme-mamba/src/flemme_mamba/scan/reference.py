"""The selective scan written as the recurrence, one time step at a time.

This is the definition every kernel is tested against (run it in float64) and the
"naive PyTorch loop" of the benchmark; it differentiates through autograd. Layouts are
mamba-ssm's ``selective_scan_fn``: u, delta, z ``(batch, K*D, L)``; A ``(K*D, N)``;
B, C ``(batch, G, N, L)`` with the K*D channels split into G equal groups (or
``(batch, N, L)`` for one group); D, delta_bias ``(K*D,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_groups(m: torch.Tensor, channels: int) -> torch.Tensor:
    """(batch, G, N, L) or (batch, N, L) -> (batch, channels, N, L), group g for its channels."""
    if m.dim() == 3:
        m = m.unsqueeze(1)
    return m.repeat_interleave(channels // m.shape[1], dim=1)


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;  y_t = C_t . h_t + D u_t;  out = y * silu(z)."""
    channels, length = u.shape[1], u.shape[2]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx, Cx = expand_groups(B, channels), expand_groups(C, channels)
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])            # (b, ch, L, N)
    drive = (delta * u).unsqueeze(-1) * Bx.transpose(-1, -2)           # (b, ch, L, N)
    h = u.new_zeros(u.shape[0], channels, A.shape[1])
    ys = []
    for t in range(length):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y
