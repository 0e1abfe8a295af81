"""The scan in pure PyTorch, for machines without a C++ compiler and for GPUs without mamba-ssm.

Numerically safe at any step size: the recurrence ``h_t = a_t h_{t-1} + b_t`` is solved
by a two-level chunked scan that only multiplies decays (never divides by a cumulative
product, which is what makes log-cumsum scans overflow under Mamba's dt init). Time is
split into ``nc`` chunks of ``T ≈ sqrt(L)`` steps and every tensor is laid out step-major,
``(T, nc, batch, groups, D, N)``, so each of the ~2·sqrt(L) Python steps reads contiguous
memory. Only the recurrence has a hand-written backward (the reverse scan
``g_t = dh_t + a_{t+1} g_{t+1}``); the element-wise parts go through autograd.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .contract import scan_inputs, scan_output


def _to_steps(x: torch.Tensor, T: int, nc: int) -> torch.Tensor:
    """(..., L) -> contiguous (T, nc, ...), zero-padded to nc * T steps."""
    pad = nc * T - x.shape[-1]
    if pad:
        x = F.pad(x, (0, pad))
    x = x.reshape(*x.shape[:-1], nc, T)
    return x.movedim(-1, 0).movedim(-1, 1).contiguous()


class StepScan(torch.autograd.Function):
    """h_t = a_t h_{t-1} + x_t over the time index (i, c) -> c * T + i of (T, nc, ...) tensors."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        T, nc = a.shape[0], a.shape[1]
        h = torch.empty_like(x)       # first: each chunk scanned from a zero state
        prod = torch.empty_like(a)    # decay from the chunk's start
        h[0], prod[0] = x[0], a[0]
        for i in range(1, T):         # every chunk at once
            torch.addcmul(x[i], a[i], h[i - 1], out=h[i])
            torch.mul(prod[i - 1], a[i], out=prod[i])
        start = torch.zeros_like(x[0])  # (nc, ...): the state entering each chunk
        for c in range(1, nc):
            torch.addcmul(h[-1, c - 1], prod[-1, c - 1], start[c - 1], out=start[c])
        h.addcmul_(prod, start.unsqueeze(0))
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, dh: torch.Tensor):  # type: ignore[override]
        a, h = ctx.saved_tensors
        T, nc = a.shape[0], a.shape[1]
        dh = dh.contiguous()
        g = torch.empty_like(dh)      # first: reverse scan of each chunk from a zero carry
        suffix = torch.empty_like(a)  # a_{i+1} ... a_{T-1} within the chunk
        g[-1] = dh[-1]
        suffix[-1] = 1.0
        for i in range(T - 2, -1, -1):
            torch.addcmul(dh[i], a[i + 1], g[i + 1], out=g[i])
            torch.mul(suffix[i + 1], a[i + 1], out=suffix[i])
        carry = torch.zeros_like(dh[0])  # (nc, ...): a_{next start} * g_{next start} for each chunk
        for c in range(nc - 2, -1, -1):
            g_next = torch.addcmul(g[0, c + 1], suffix[0, c + 1], carry[c + 1])
            torch.mul(a[0, c + 1], g_next, out=carry[c])
        g.addcmul_(suffix, carry.unsqueeze(0))
        da = torch.empty_like(a)      # dL/da_t = g_t * h_{t-1}
        torch.mul(g[1:], h[:-1], out=da[1:])
        torch.mul(g[0, 1:], h[-1, :-1], out=da[0, 1:])
        da[0, 0] = 0.0
        return da, g


def selective_scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """Same contract as :func:`reference.selective_scan_ref`, any device.

    Computes in float32 (float64 if any input is float64) whatever the inputs' dtypes
    (bf16 activations with float32 ``A``/``D``, as the mixer passes them outside
    autocast, or a module moved to bf16) and outside autocast; the result has ``u``'s
    dtype. ``L = 0`` gives an empty result (and empty gradients).
    """
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    if u.shape[-1] == 0:
        return _empty_scan(u, delta, A, B, C, D, z, delta_bias)
    with torch.autocast(u.device.type, enabled=False):
        y = _scan(*[t.to(dtype) if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)],
                  delta_softplus)
    return y.to(u.dtype)


def _empty_scan(*inputs: torch.Tensor | None) -> torch.Tensor:
    """The ``L = 0`` result, connected to every input so that backward gives zero gradients."""
    u = inputs[0]
    zero = sum((t.sum() * 0 for t in inputs if t is not None and t.requires_grad), u.new_zeros(()))
    return u.new_zeros(u.shape) + zero.to(u.dtype)


def _scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
          D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
          delta_softplus: bool) -> torch.Tensor:
    delta, B, C, (batch, channels, length, groups, n, per) = scan_inputs(u, delta, A, B, C, delta_bias,
                                                                        delta_softplus)
    T = max(1, math.ceil(math.sqrt(length)))
    nc = -(-length // T)
    shape = (T, nc, batch, groups, per, 1)
    dt = _to_steps(delta, T, nc).view(shape)            # padded steps: dt = 0, so a = 1 and x = 0
    us = _to_steps(u, T, nc).view(shape)
    Bs = _to_steps(B, T, nc).unsqueeze(-2)              # (T, nc, batch, groups, 1, N)
    Cs = _to_steps(C, T, nc).unsqueeze(-1)              # (T, nc, batch, groups, N, 1)
    a = torch.exp(dt * A.reshape(groups, per, n))       # (T, nc, batch, groups, per, N)
    h = StepScan.apply(a, (dt * us) * Bs)
    y = torch.matmul(h, Cs).squeeze(-1)                 # (T, nc, batch, groups, per)
    y = y.permute(2, 3, 4, 1, 0).reshape(batch, channels, nc * T)[..., :length]
    return scan_output(y, u, D, z)
