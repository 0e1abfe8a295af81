"""The selective scan in a form the exporters keep dynamic (ONNX ``Scan``, torch.export).

Python loops would be unrolled at the traced length and the C++ kernel cannot be traced,
so the recurrence ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t`` runs as torch ``scan``
operators (ONNX ``Scan``), laid out for ONNX Runtime, which executes one small graph per
step and does not fuse element-wise operations:

* time is cut into a fixed number of chunks (``CHUNKS``) of ``q = ceil(L / CHUNKS)``
  steps, and each scan step advances every chunk at once, so there are ``q`` steps
  (not ``L``) of ``CHUNKS``-wide operations, and the graph does not depend on ``L``;
* the decays ``exp(Δ A)``, the inputs ``Δ u B`` and the state ``(batch, N, channels)``
  exist one step at a time inside the step graph (a few MB that stay in cache), never as
  ``(L, channels, N)`` tensors in memory, and ``C · h`` is reduced in the step, so
  only ``(L, channels)`` leaves it;
* the chunk axis is innermost, so reordering the inputs to step-major order is a plain
  2-D transpose (ONNX Runtime's fast path; general permutations are several times slower)
  and broadcasts run over contiguous spans of ``CHUNKS`` values.

Three scans: the state each chunk ends with (from a zero start), the chain of states
entering the chunks (``CHUNKS`` steps of one state), and the chunks rescanned from those
states, emitting ``y``. Only multiplications by decays ``<= 1``, as in the sequential
recurrence, so nothing overflows whatever ``Δ`` is (the log-cumsum form's failure).
The SSD matrix form needs one decay per head (Mamba-2, :mod:`..ssd`); here ``A`` has one
per channel and state, whose ``(Q, Q)`` decay matrices would cost ``Q`` times the state.

Only for inference exports: no hand-written backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .contract import scan_inputs, scan_output

CHUNKS = 64  # chunks advanced together per scan step (a multiple of 8 keeps broadcast spans vectorised)


def _hop_scan():
    from torch._higher_order_ops.scan import scan

    return scan


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)`` as element-wise ops: ONNX Runtime's ``Softplus`` kernel (what
    F.softplus exports to) is scalar code, ~5x slower than these vectorised ones."""
    return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))


def step_major(t: torch.Tensor, q: int) -> torch.Tensor:
    """``(..., L) -> (q, ..., CHUNKS)``: step ``c * q + i`` at ``[i, ..., c]``, zero past ``L``."""
    t = F.pad(t, (0, CHUNKS * q - t.shape[-1]))
    return t.reshape(*t.shape[:-1], CHUNKS, q).movedim(-1, 0).contiguous()


def chunked_scan(dt: torch.Tensor, dtu: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor) -> torch.Tensor:
    """``y_t = C_t · h_t`` of ``h_t = exp(dt_t A) h_{t-1} + dtu_t B_t`` in step-major layout.

    ``dt, dtu (q, b, g, 1, per, CHUNKS)``, ``A (g, N, per, CHUNKS)``, ``B, C (q, b, g, N, 1, CHUNKS)``
    (padded steps: ``dt = dtu = 0``, so the state passes unchanged). Returns ``(q, b, g, per, CHUNKS)``.
    """
    scan = _hop_scan()

    def advance(h, xs):                               # one step of every chunk
        dt_i, dtu_i, B_i = xs[:3]
        return torch.exp(dt_i * A) * h + dtu_i * B_i

    def to_end(h, xs):
        return advance(h, xs), ()

    state = dt.new_zeros(dt.shape[1], dt.shape[2], A.shape[1], dt.shape[4], CHUNKS)   # (b, g, N, per, CHUNKS)
    ends, _ = scan(to_end, state, (dt, dtu, B))
    decay = torch.exp(dt.sum(0) * A)                  # each chunk's total decay

    def chain(s, xs):                                 # the state entering each chunk
        end, d = xs
        return end + d * s, s.clone()

    _, starts = scan(chain, dt.new_zeros(state.shape[:-1]), (ends.movedim(-1, 0).contiguous(), decay.movedim(-1, 0).contiguous()))

    def emit(h, xs):
        h = advance(h, xs)
        return h, (h * xs[3]).sum(2)

    _, y = scan(emit, starts.movedim(0, -1).contiguous(), (dt, dtu, B, C))
    return y


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
    q = (length + CHUNKS - 1) // CHUNKS
    dt = step_major(delta.reshape(batch, groups, 1, per, length), q)           # (q, b, g, 1, per, CHUNKS)
    dtu = step_major((delta * u).reshape(batch, groups, 1, per, length), q)
    Bs, Cs = step_major(B.unsqueeze(-2), q), step_major(C.unsqueeze(-2), q)    # (q, b, g, N, 1, CHUNKS)
    A = A.reshape(groups, per, n).transpose(1, 2).unsqueeze(-1).expand(-1, -1, -1, CHUNKS).contiguous()
    y = chunked_scan(dt, dtu, A, Bs, Cs)                                       # (q, b, g, per, CHUNKS)
    y = y.movedim(0, -1).reshape(batch, channels, CHUNKS * q)[..., :length]
    return scan_output(y, u, D, z).to(dtype)
