"""The C++ CPU scan as a :class:`torch.autograd.Function`.

The kernel (csrc/selective_scan.cpp) runs the recurrence for given step sizes: forward
stores only the output and the state every ``chunk`` steps; backward recomputes each
chunk's states from them and runs the reverse scan. The cheap per-step parts
(``softplus(delta + bias)``, the ``silu(z)`` gate) are vectorised PyTorch ops around it
whose gradients autograd handles. Computes in float32 (float64 for float64 inputs, e.g.
gradcheck); other dtypes are converted and the results converted back.
"""

from __future__ import annotations

import ctypes
import os

import torch
import torch.nn.functional as F

from .build import ScanArgs, load_kernel

CHUNK = 64
_PAD = 8  # the kernel works on vectors of 8 floats: N is zero-padded to a multiple of 8
MAX_STATE = 256  # at most 32 such vectors per channel (kMaxVecs in csrc/selective_scan.cpp)


_last_threads = 1


def scan_threads() -> int:
    """Threads for one kernel call: torch's thread count, capped to the cores other processes
    leave idle. The kernel's OpenMP threads spin while they wait; on a shared or oversubscribed
    CPU two of them ran 2-4x slower than one (0.38-0.46x the 1-thread speed, measured on a
    2-core machine shared by several jobs), so the kernel uses only the cores that the 1-minute
    load average (minus this process's own scan threads) leaves free, and never fewer than 1.
    ``FLEMME_MAMBA_THREADS=n`` fixes the count. The PyTorch ops around the kernel keep torch's."""
    global _last_threads
    fixed = os.environ.get("FLEMME_MAMBA_THREADS", "").strip()
    want = int(fixed) if fixed.isdigit() and int(fixed) > 0 else torch.get_num_threads()
    if fixed or want <= 1:
        return max(1, want)
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    except OSError:
        return want
    others = max(0.0, load - _last_threads)
    _last_threads = max(1, min(want, int(cores - others + 0.5)))
    return _last_threads


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _bc_layout(m: torch.Tensor, dtype: torch.dtype, n_pad: int) -> torch.Tensor:
    """(b, G, N, L) or (b, N, L) -> contiguous (b, G, L, N_pad), zero in the padding."""
    if m.dim() == 3:
        m = m.unsqueeze(1)
    m = m.detach().to(dtype).transpose(-1, -2)
    return F.pad(m, (0, n_pad - m.shape[-1])).contiguous()


class CppScanCore(torch.autograd.Function):
    """y = scan(u, dt, A, B, C) + D u for step sizes ``dt`` already final (after softplus)."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D, chunk):  # type: ignore[override]
        batch, channels, length = u.shape
        n = A.shape[1]
        n_pad = -(-n // _PAD) * _PAD
        if n_pad > MAX_STATE:
            raise ValueError(f"the C++ scan takes at most {MAX_STATE} states, got N={n}; "
                             f"use flemme_mamba.scan.selective_scan (backend auto runs the PyTorch scan)")
        lib = load_kernel()
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        groups = 1 if B.dim() == 3 else B.shape[1]
        uc, dtc = u.detach().to(dtype).contiguous(), dt.detach().to(dtype).contiguous()
        Dc = D.detach().to(dtype).contiguous() if D is not None else None
        Ap = F.pad(A.detach().to(dtype), (0, n_pad - n)).contiguous()
        Bt, Ct = _bc_layout(B, dtype, n_pad), _bc_layout(C, dtype, n_pad)
        out = torch.empty(batch, channels, length, dtype=dtype)
        ckpt = torch.empty(batch, channels, -(-length // chunk), n_pad, dtype=dtype)
        args = ScanArgs(u=_ptr(uc), dt=_ptr(dtc), A=_ptr(Ap), B=_ptr(Bt), C=_ptr(Ct), D=_ptr(Dc), out=_ptr(out),
                        ckpt=_ptr(ckpt), batch=batch, channels=channels, groups=groups, length=length,
                        dstate=n_pad, chunk=chunk, nthreads=scan_threads())
        fn = lib.flemme_scan_fwd_f64 if dtype == torch.float64 else lib.flemme_scan_fwd_f32
        if fn(ctypes.byref(args)) != 0:
            raise RuntimeError(f"selective scan kernel rejected its arguments (N={n_pad}, groups={groups})")
        ctx.save_for_backward(uc, dtc, Ap, Bt, Ct, Dc, ckpt)
        ctx.meta = (chunk, n, groups, B.dim(), [t.dtype if t is not None else None for t in (u, dt, A, B, C, D)])
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        uc, dtc, Ap, Bt, Ct, Dc, ckpt = ctx.saved_tensors
        chunk, n, groups, b_dim, dtypes = ctx.meta
        dtype = uc.dtype
        batch, channels, length = uc.shape
        dout = dout.to(dtype).contiguous()
        du, ddt = torch.empty_like(uc), torch.empty_like(dtc)
        dA = torch.empty(batch, channels, Ap.shape[1], dtype=dtype)
        dD = torch.empty(batch, channels, dtype=dtype)
        dB, dC = torch.zeros_like(Bt), torch.zeros_like(Ct)
        args = ScanArgs(u=_ptr(uc), dt=_ptr(dtc), A=_ptr(Ap), B=_ptr(Bt), C=_ptr(Ct), D=_ptr(Dc), ckpt=_ptr(ckpt),
                        dout=_ptr(dout), du=_ptr(du), ddt=_ptr(ddt), dA=_ptr(dA), dD=_ptr(dD), dB=_ptr(dB),
                        dC=_ptr(dC), batch=batch, channels=channels, groups=groups, length=length,
                        dstate=Ap.shape[1], chunk=chunk, nthreads=scan_threads())
        lib = load_kernel()
        fn = lib.flemme_scan_bwd_f64 if dtype == torch.float64 else lib.flemme_scan_bwd_f32
        if fn(ctypes.byref(args)) != 0:
            raise RuntimeError("selective scan kernel rejected its arguments in backward")

        def back(m: torch.Tensor) -> torch.Tensor:  # (b, G, L, N_pad) -> the input's layout
            m = m[..., :n].transpose(-1, -2)
            return m.squeeze(1) if b_dim == 3 else m

        grads = [du, ddt, dA.sum(0, dtype=torch.float64)[:, :n], back(dB), back(dC),
                 dD.sum(0, dtype=torch.float64) if Dc is not None else None]
        out = [g.to(want) if g is not None and ctx.needs_input_grad[i] else None
               for i, (g, want) in enumerate(zip(grads, dtypes))]
        return (*out, None)


def selective_scan_cpp(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       chunk: int = CHUNK) -> torch.Tensor:
    """Same contract as :func:`reference.selective_scan_ref`; CPU tensors only."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = CppScanCore.apply(u, delta, A, B, C, D, chunk)
    return y * F.silu(z) if z is not None else y
