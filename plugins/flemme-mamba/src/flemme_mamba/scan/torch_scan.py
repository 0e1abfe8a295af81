"""The scan in pure PyTorch, for machines without a C++ compiler and for GPUs without mamba-ssm.

Numerically safe at any step size: the recurrence ``h_t = a_t h_{t-1} + b_t`` is solved
by a two-level chunked scan that only multiplies decays (never divides by a cumulative
product, which is what makes log-cumsum scans overflow under Mamba's dt init). Only the
recurrence has a hand-written backward (the reverse scan ``g_t = dh_t + a_{t+1} g_{t+1}``);
the element-wise parts go through autograd. Costs O(L) work in about 2*sqrt(L) Python steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .reference import expand_groups


def _chunked_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t along dim -2 of (..., L, N) tensors, h_{-1} = 0."""
    length = a.shape[-2]
    T = max(1, math.ceil(math.sqrt(length)))
    nc = -(-length // T)
    pad = nc * T - length
    if pad:
        a = F.pad(a, (0, 0, 0, pad), value=1.0)
        b = F.pad(b, (0, 0, 0, pad), value=0.0)
    # step-major layout (T, ..., nc, N): every step below reads contiguous memory
    a = a.reshape(*a.shape[:-2], nc, T, a.shape[-1]).movedim(-2, 0).contiguous()
    b = b.reshape(*b.shape[:-2], nc, T, b.shape[-1]).movedim(-2, 0).contiguous()
    local = torch.empty_like(b)   # the scan of each chunk from a zero state
    prod = torch.empty_like(a)    # the decay from each chunk's start
    local[0], prod[0] = b[0], a[0]
    for i in range(1, T):  # every chunk at once
        torch.addcmul(b[i], a[i], local[i - 1], out=local[i])
        torch.mul(prod[i - 1], a[i], out=prod[i])
    last_prod = prod[-1].movedim(-2, 0).contiguous()   # (nc, ..., N)
    last_local = local[-1].movedim(-2, 0).contiguous()
    starts = torch.empty_like(last_local)
    carry = torch.zeros_like(last_local[0])
    for c in range(nc):  # the state entering each chunk
        starts[c] = carry
        carry = torch.addcmul(last_local[c], last_prod[c], carry)
    h = torch.addcmul(local, prod, starts.movedim(0, -2).unsqueeze(0))
    h = h.movedim(0, -2).reshape(*h.shape[1:-2], nc * T, h.shape[-1])
    return h[..., :length, :] if pad else h


class LinearScan(torch.autograd.Function):
    """The first-order linear recurrence with its reverse-scan backward."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = _chunked_scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, dh: torch.Tensor):  # type: ignore[override]
        a, h = ctx.saved_tensors
        a_next = torch.cat([a[..., 1:, :], torch.zeros_like(a[..., :1, :])], dim=-2)
        g = _chunked_scan(a_next.flip(-2), dh.flip(-2)).flip(-2)   # dL/dh_t through the recurrence
        h_prev = torch.cat([torch.zeros_like(h[..., :1, :]), h[..., :-1, :]], dim=-2)
        return g * h_prev, g


def selective_scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """Same contract as :func:`reference.selective_scan_ref`, any device."""
    channels = u.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = expand_groups(B, channels).transpose(-1, -2)                 # (b, ch, L, N)
    Cx = expand_groups(C, channels).transpose(-1, -2)
    a = torch.exp(delta.unsqueeze(-1) * A[:, None, :])
    h = LinearScan.apply(a, (delta * u).unsqueeze(-1) * Bx)
    y = (h * Cx).sum(-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y
