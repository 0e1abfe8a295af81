"""The selective scan in a form the exporters keep dynamic (ONNX ``Scan``, torch.export).

Python loops would be unrolled at the traced length and the C++ kernel cannot be traced,
so the recurrence ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``, ``y_t = C_t · h_t`` runs as
one torch ``scan`` operator (ONNX ``Scan``) over the ``L`` steps, shaped for ONNX Runtime,
which runs the step graph once per step and does not fuse element-wise operations:

* the decays ``exp(Δ_t A)``, the inputs ``Δ_t u_t B_t`` and the state ``(batch, groups, N,
  per)`` exist one step at a time inside the step graph, a few tens of KB that stay in
  cache, never as ``(L, channels, N)`` tensors in memory; ``C_t · h_t`` is reduced in the
  step, so only ``(L, channels)`` leaves it;
* the sequence inputs are reordered to step-major once, moving only the time axis (ONNX
  Runtime's fast transpose; general permutations are several times slower).

Measured against the alternatives (``benchmarks/bench_export.py`` shapes, 1 thread): the
same recurrence cut into chunks advanced together (chunk-end states, a chain over chunks,
a rescan) does ~1.7x the element-wise work for fewer steps and lost at every length from
64 to 24576; materialising all decays before the loop lost 2x (memory-bound). The SSD
matrix form (:mod:`..ssd`) needs one decay per head (Mamba-2); here ``A`` has one per
channel and state, whose ``(Q, Q)`` decay matrices would cost ``Q`` times the state.
Only multiplications by decays ``<= 1``, as in the reference, so nothing overflows.

Only for inference exports: no hand-written backward.
"""

from __future__ import annotations

import torch

from .contract import scan_inputs, scan_output


def _hop_scan():
    from torch._higher_order_ops.scan import scan

    return scan


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)`` as element-wise ops: ONNX Runtime's ``Softplus`` kernel (what
    F.softplus exports to) is scalar code, ~5x slower than these vectorised ones."""
    return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))


def step_major(t: torch.Tensor) -> torch.Tensor:
    """``(..., L) -> (L, ...)``, contiguous: the scan's per-step slices."""
    return t.movedim(-1, 0).contiguous()


def selective_scan_export(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                          delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """Same contract and math as :func:`.reference.selective_scan_ref`, in float32."""
    dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias = (t.float() if t is not None else None
                                           for t in (u, delta, A, B, C, D, z, delta_bias))
    delta, B, C, (batch, channels, length, groups, n, per) = scan_inputs(u, delta, A, B, C, delta_bias, False)
    if delta_softplus:
        delta = softplus(delta)
    dt = step_major(delta.reshape(batch, groups, 1, per, length))               # (L, b, g, 1, per)
    dtu = step_major((delta * u).reshape(batch, groups, 1, per, length))
    Bs, Cs = step_major(B.unsqueeze(-2)), step_major(C.unsqueeze(-2))          # (L, b, g, N, 1)
    A = A.reshape(groups, per, n).transpose(1, 2).contiguous()                  # (g, N, per)

    def step(h, xs):        # no MatMul here: its decomposition breaks the ONNX export with a dynamic batch
        dt_t, dtu_t, B_t, C_t = xs
        h = torch.exp(dt_t * A) * h + dtu_t * B_t
        return h, (h * C_t).sum(2)

    _, y = _hop_scan()(step, u.new_zeros(batch, groups, n, per), (dt, dtu, Bs, Cs))   # (L, b, g, per)
    y = y.movedim(0, -1).reshape(batch, channels, length)
    return scan_output(y, u, D, z).to(dtype)
