"""The selective scan written as the recurrence, one time step at a time.

This is the definition every kernel is tested against (run it in float64) and the
"naive PyTorch loop" of the benchmark; it differentiates through autograd. Layouts are
mamba-ssm's ``selective_scan_fn``: u, delta, z ``(batch, K*D, L)``; A ``(K*D, N)``;
B, C ``(batch, G, N, L)`` with the K*D channels split into G equal groups (or
``(batch, N, L)`` for one group); D, delta_bias ``(K*D,)``.
"""

from __future__ import annotations

import torch

from .contract import scan_inputs, scan_output


def expand_groups(m: torch.Tensor, channels: int) -> torch.Tensor:
    """(batch, G, N, L) or (batch, N, L) -> (batch, channels, N, L), group g for its channels."""
    if m.dim() == 3:
        m = m.unsqueeze(1)
    return m.repeat_interleave(channels // m.shape[1], dim=1)


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;  y_t = C_t . h_t + D u_t;  out = y * silu(z)."""
    delta, B, C, (batch, channels, length, groups, n, per) = scan_inputs(u, delta, A, B, C, delta_bias,
                                                                        delta_softplus)
    A = A.reshape(groups, per, n)

    def steps(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Time-major contiguous copies, one view per step (one cheap backward through unbind)."""
        return x.movedim(-1, 0).contiguous().unbind(0)

    us, dts = steps(u.reshape(batch, groups, per, length)), steps(delta.reshape(batch, groups, per, length))
    Bs, Cs = steps(B), steps(C)                                          # L x (batch, groups, N)
    h = u.new_zeros(batch, groups, per, n)
    ys = []
    for t in range(length):
        h = torch.exp(dts[t].unsqueeze(-1) * A) * h + (dts[t] * us[t]).unsqueeze(-1) * Bs[t].unsqueeze(2)
        ys.append((h * Cs[t].unsqueeze(2)).sum(-1))
    return scan_output(torch.stack(ys, dim=-1).reshape(batch, channels, length), u, D, z)
