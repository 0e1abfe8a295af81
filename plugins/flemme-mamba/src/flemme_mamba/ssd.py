"""Mamba-2's state-space duality (SSD) scan, and the SS2D/SS3D mixer built on it.

Mamba-2 restricts the state matrix to a scalar decay per head, ``A_h``, which turns the
scan into masked matrix products (Dao & Gu, 2024). For a head with state
``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_tᵀ`` and output ``y_t = C_t h_t + D x_t``, a chunk
of Q steps is

    y_diag = (C Bᵀ ∘ L) (Δ x),   L[i, j] = exp(Σ_{j<r≤i} Δ_r A)  (i ≥ j, else 0)

plus the contribution of the state carried in from earlier chunks; chunk-end states are
chained by a loop over chunks (L/Q steps, not L). Every exponent is a sum of Δ·A ≤ 0, so
nothing overflows whatever Δ is (the log-cumsum trick's failure mode), and the masked
cumulative sum (not a difference of two long cumsums) keeps float32 accurate.

Everything is plain PyTorch matrix products, so autograd gives the backward and the same
code runs on CPU and GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flemme_core.errors import ConfigError

from .ssm import DirectionalMixer, dt_bias_init


def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """``(..., Q) -> (..., Q, Q)``: ``out[i, j] = Σ_{j<r≤i} a_r`` for i ≥ j, −inf above the diagonal.

    Computed as a cumulative sum of masked copies (not ``cumsum_i − cumsum_j``), so it is
    exact to rounding of the short sums, and exp(−inf) = 0 is the causal mask.
    """
    q = a.shape[-1]
    strict = torch.ones(q, q, dtype=torch.bool, device=a.device).tril(-1)
    sums = a[..., :, None].expand(*a.shape, q).masked_fill(~strict, 0).cumsum(dim=-2)
    causal = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~causal, float("-inf"))


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None = None, chunk: int = 64, export: bool = False) -> torch.Tensor:
    """The SSD scan over ``L`` steps, heads grouped over shared B/C.

    Shapes: ``x (b, g, m, L, p)`` (g groups of m heads with p channels), ``dt (b, g, m, L)``
    (already positive), ``A (g, m)`` (negative), ``B, C (b, g, L, n)``, ``D (g, m)``.
    Returns ``y (b, g, m, L, p)``. ``L`` need not be a multiple of ``chunk``. ``export``:
    the chain over chunks as a torch ``scan`` operator and padding unconditional, so that an
    exported graph keeps ``L`` dynamic (a Python loop would be unrolled at the traced length).
    """
    b, g, m, length, p = x.shape
    pad = (-length) % chunk
    if pad or export:  # Δ = 0 at the end: no decay, no input; earlier outputs are causal, so unchanged
        x, dt = F.pad(x, (0, 0, 0, pad)), F.pad(dt, (0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    c = (length + pad) // chunk
    a = (dt * A[None, :, :, None]).reshape(b, g, m, c, chunk)          # log decays, <= 0
    xd = (x * dt[..., None]).reshape(b, g, m, c, chunk, p)
    Bc = B.reshape(b, g, 1, c, chunk, -1)
    Cc = C.reshape(b, g, 1, c, chunk, -1)
    # inside each chunk: (C Bᵀ ∘ L) Δx
    y = (Cc @ Bc.transpose(-1, -2) * segment_sums(a).exp()) @ xd      # (b, g, m, c, Q, p)
    # the state each chunk leaves behind, and the chain of states across chunks
    a_cum = a.cumsum(-1)
    to_end = (a_cum[..., -1:] - a_cum).exp()                           # decay from step s to chunk end
    states = (xd * to_end[..., None]).transpose(-1, -2) @ Bc           # (b, g, m, c, p, n)
    chunk_decay = a_cum[..., -1].exp()                                 # (b, g, m, c)
    if export:
        carried_in = _chain_export(chunk_decay, states)
    else:
        h = torch.zeros_like(states[:, :, :, 0])
        carried = []
        for i in range(c):
            carried.append(h)
            h = chunk_decay[..., i, None, None] * h + states[:, :, :, i]
        carried_in = torch.stack(carried, dim=3)                       # state entering each chunk
    y = y + (Cc @ carried_in.transpose(-1, -2)) * a_cum.exp()[..., None]
    y = y.reshape(b, g, m, c * chunk, p)[:, :, :, :length]
    if D is not None:
        y = y + x[:, :, :, :length] * D[None, :, :, None, None]
    return y


def _chain_export(chunk_decay: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """The loop over chunks of :func:`ssd_scan` as torch's ``scan`` operator (exportable)."""
    from torch._higher_order_ops.scan import scan

    def step(h, ds):
        decay, state = ds
        return decay[..., None, None] * h + state, h.clone()

    _, carried = scan(step, torch.zeros_like(states[:, :, :, 0]),
                      (chunk_decay.movedim(3, 0).contiguous(), states.movedim(3, 0).contiguous()))
    return carried.movedim(0, 3)


def a_log_init_mamba2(heads: int, low: float = 1.0, high: float = 16.0) -> torch.Tensor:
    """Mamba-2's init: A = −U(1, 16) per head, stored as log(−A)."""
    return torch.empty(heads).uniform_(low, high).log()


class SSDMixerND(DirectionalMixer):
    """SS2D / SS3D with Mamba-2's scan on channels-last tokens ``(B, *S, width)``.

    As :class:`~flemme_mamba.ssm.SelectiveScanND` (in_proj to x and gate z, depthwise conv,
    K scan directions, merge, norm, gate, out_proj), but each direction projects x to one
    shared (B, C) and a Δ per head, and the scan has a scalar decay per head.
    Parameters: ``x_proj_weight (K, 2N + H, inner)``, ``dt_bias``, ``A_log``, ``D`` (K·H each).
    """

    export_note = "mamba-2 SSD scan: the loop over chunks exported as a torch scan operator (same math)"

    def __init__(self, dims: int, width: int, *, d_state: int = 16, expand: float = 2.0, head_dim: int = 16,
                 d_conv: int = 3, scan: str = "cross+flip", chunk: int = 64, dropout: float = 0.0):
        inner = max(1, int(expand * width))
        if inner % head_dim:
            raise ConfigError(f"model.encoder.head_dim {head_dim} does not divide the inner width {inner} "
                              f"(expand × width {width}); use head_dim {heads_hint(inner, head_dim)}")
        super().__init__(dims, width, expand=expand, d_conv=d_conv, scan=scan, dropout=dropout)
        k = len(self.directions)
        self.d_state, self.head_dim, self.heads, self.chunk = d_state, head_dim, inner // head_dim, chunk
        bound = inner ** -0.5
        self.x_proj_weight = nn.Parameter(torch.empty(k, 2 * d_state + self.heads, inner).uniform_(-bound, bound))
        self.dt_bias = nn.Parameter(dt_bias_init((k * self.heads,)))
        self.A_log = nn.Parameter(a_log_init_mamba2(k * self.heads))
        self.D = nn.Parameter(torch.ones(k * self.heads))

    def scan(self, xs: torch.Tensor) -> torch.Tensor:
        b, k, _, length = xs.shape
        Bs, Cs, dts = (self.x_proj_weight @ xs).split([self.d_state, self.d_state, self.heads], dim=2)
        dt = F.softplus(dts.float() + self.dt_bias.view(k, self.heads, 1).float())  # (B, K, H, L)
        heads = xs.reshape(b, k, self.heads, self.head_dim, length).transpose(-1, -2)  # (B, K, H, L, P)
        y = ssd_scan(heads.float(), dt, -self.A_log.float().exp().view(k, self.heads),
                     Bs.transpose(-1, -2).float(), Cs.transpose(-1, -2).float(),
                     self.D.float().view(k, self.heads), chunk=self.chunk, export=self.exporting)
        return y.transpose(-1, -2).reshape(b, k, self.inner, length)


def heads_hint(inner: int, head_dim: int) -> str:
    """A valid head_dim near the asked one, for the error message."""
    divisors = [d for d in range(1, inner + 1) if inner % d == 0]
    return str(min(divisors, key=lambda d: (abs(math.log(d / head_dim)), d)))
