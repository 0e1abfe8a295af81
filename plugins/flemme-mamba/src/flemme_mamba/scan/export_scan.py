"""The selective scan in a form the exporters keep dynamic (ONNX ``Scan``, torch.export).

The same two-level chunked recurrence as :mod:`.torch_scan` (``h_t = a_t h_{t-1} + x_t``:
every chunk scanned from a zero state, then the states entering the chunks chained, then
each chunk corrected by its carried-in state times its running decay), written with
torch's ``scan`` operator instead of Python loops, and with a fixed chunk length, so the
traced graph does not depend on the sequence length: Python loops would be unrolled at
the traced length (and C++ kernels cannot be traced at all). Only for inference exports:
it has no hand-written backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .contract import scan_inputs, scan_output

CHUNK = 64  # steps scanned in parallel chunks; the chain over chunks has L / CHUNK steps


def _hop_scan():
    from torch._higher_order_ops.scan import scan

    return scan


def linear_recurrence(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + x_t`` along dim 0 (``(L, ...)``, any ``L``); returns ``h`` ``(L, ...)``."""
    scan = _hop_scan()
    length = a.shape[0]
    nc = (length + CHUNK - 1) // CHUNK
    pad = nc * CHUNK - length                        # padded steps: a = 1, x = 0 (nothing changes)
    tail = [0, 0] * (a.dim() - 1)
    a = F.pad(a, [*tail, 0, pad], value=1.0).reshape(nc, CHUNK, *a.shape[1:]).transpose(0, 1)
    x = F.pad(x, [*tail, 0, pad]).reshape(nc, CHUNK, *x.shape[1:]).transpose(0, 1)

    def within(carry, ax):                           # every chunk at once, from a zero state
        h, p = carry
        a_i, x_i = ax
        h = a_i * h + x_i
        p = p * a_i
        return (h, p), (h.clone(), p.clone())

    a, x = a.contiguous(), x.contiguous()
    zero = x.new_zeros(x.shape[1:])                  # contiguous: the scan's carry has the init's layout
    _, (h, prod) = scan(within, (zero, a.new_ones(a.shape[1:])), (a, x))

    def across(state, hp):                           # the state entering each chunk
        h_end, p_end = hp
        return h_end + p_end * state, state.clone()

    _, start = scan(across, x.new_zeros(x.shape[2:]), (h[-1].contiguous(), prod[-1].contiguous()))  # (nc, ...)
    h = h + prod * start.unsqueeze(0)                 # (CHUNK, nc, ...)
    return h.transpose(0, 1).reshape(nc * CHUNK, *h.shape[2:])[:length]


def selective_scan_export(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                          delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """Same contract and math as :func:`.reference.selective_scan_ref`, in float32."""
    dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias = (t.float() if t is not None else None
                                           for t in (u, delta, A, B, C, D, z, delta_bias))
    delta, B, C, (batch, channels, length, groups, n, per) = scan_inputs(u, delta, A, B, C, delta_bias,
                                                                        delta_softplus)
    dt = delta.reshape(batch, groups, per, 1, length)
    a = torch.exp(dt * A.reshape(groups, per, n, 1))                   # (b, g, per, N, L)
    x = (dt * u.reshape(batch, groups, per, 1, length)) * B.unsqueeze(2)
    h = linear_recurrence(a.permute(4, 0, 1, 2, 3), x.permute(4, 0, 1, 2, 3))   # (L, b, g, per, N)
    y = (h * C.permute(3, 0, 1, 2).unsqueeze(3)).sum(-1)               # (L, b, g, per)
    y = y.permute(1, 2, 3, 0).reshape(batch, channels, length)
    return scan_output(y, u, D, z).to(dtype)
