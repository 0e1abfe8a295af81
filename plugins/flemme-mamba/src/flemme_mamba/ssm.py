"""The selective-scan mixer of a VMamba block (SS2D, and its 3D form).

in_proj to 2 × inner (x, gate z) -> depthwise conv + SiLU on x -> K scan sequences ->
per-direction projections to (dt, B, C) -> one selective scan over all directions ->
un-flip / un-permute and sum -> LayerNorm -> × SiLU(z) -> out_proj.

Parameters keep mamba-ssm's / VMamba's layouts so that one safetensors file serves every
backend (mamba-ssm CUDA, the C++ CPU kernel, the PyTorch scan): ``x_proj_weight``
(K, dt_rank + 2N, inner), ``dt_projs_weight`` (K, inner, dt_rank), ``dt_projs_bias``
(K, inner), ``A_log`` (K·inner, N), ``D`` (K·inner).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from flemme_core import layers

from .directions import Directions
from .scan import selective_scan


def dt_bias_init(size: tuple[int, ...], dt_min: float = 1e-3, dt_max: float = 0.1,
                 floor: float = 1e-4) -> torch.Tensor:
    """Mamba's dt init: softplus(bias) is log-uniform in [dt_min, dt_max] (at least ``floor``)."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


def a_log_init(channels: int, d_state: int) -> torch.Tensor:
    """S4D-real: A = -(1, 2, ..., N) for every channel, stored as log(-A)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(channels, 1)


class DirectionalMixer(nn.Module):
    """What Mamba-1's and Mamba-2's mixers share around their scans, written once:
    in_proj to (x, gate z) -> depthwise conv + SiLU -> K directions -> ``scan`` -> merge ->
    LayerNorm -> × SiLU(z) -> out_proj. Subclasses own the scan parameters and ``scan``."""

    def __init__(self, dims: int, width: int, *, expand: float, d_conv: int, scan: str, dropout: float):
        super().__init__()
        self.inner = max(1, int(expand * width))
        self.directions = Directions(dims, scan)
        self.in_proj = nn.Linear(width, 2 * self.inner, bias=False)
        self.conv = layers.conv(dims, self.inner, self.inner, kernel_size=d_conv, groups=self.inner)
        self.out_norm = nn.LayerNorm(self.inner)
        self.out_proj = nn.Linear(self.inner, width, bias=False)
        self.dropout = nn.Dropout(dropout)

    #: what ``export_mode`` says it switched to (None: nothing to switch, e.g. ``mixer: identity``)
    export_note: str | None = None
    exporting = False

    @contextlib.contextmanager
    def export_mode(self, fmt: str) -> Iterator[str | None]:
        """flemme_core.export's hook: run the scan as torch ``scan`` operators (same math;
        the C++ / mamba-ssm kernels cannot be traced, Python loops would fix the length)."""
        if self.export_note is None:
            yield None
            return
        if fmt == "torchscript":
            from flemme_core.export.modes import NotExportable

            raise NotExportable(f"the mamba {type(self).__name__} scan", "TorchScript tracing unrolls the scan at the "
                                "traced length and has no scan operator; use --format onnx or torch-export")
        self.exporting = True
        try:
            yield self.export_note
        finally:
            self.exporting = False

    def scan(self, xs: torch.Tensor) -> torch.Tensor:
        """``(B, K, inner, L)`` direction sequences -> scanned sequences of the same shape."""
        raise NotImplementedError

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, inner, *S)`` after the conv -> ``(B, inner, L)``: scan every direction, merge."""
        return self.directions.merge(self.scan(self.directions.split(x)), x.shape[2:])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, *spatial, _ = t.shape
        x, z = self.in_proj(t).chunk(2, dim=-1)
        x = F.silu(self.conv(x.movedim(-1, 1)))                      # (B, inner, *S)
        y = self.mix(x)                                              # (B, inner, L)
        y = y.transpose(1, 2).reshape(b, *spatial, self.inner).to(t.dtype)
        y = self.out_norm(y) * F.silu(z)
        return self.dropout(self.out_proj(y))


class SelectiveScanND(DirectionalMixer):
    """SS2D / SS3D on channels-last tokens ``(B, *S, width)``."""

    export_note = ("mamba selective scan: exported as the pure-PyTorch chunked scan (same math, torch scan "
                   "operators) instead of the C++ / mamba-ssm kernel, which cannot be exported")
    fused_note = ("mamba selective scan: exported as the fused ONNX Runtime op flemme.mamba::SelectiveScan (this "
                  "plugin's C++ kernel; running the file needs flemme-mamba; --portable writes standard operators)")
    fused = False

    @contextlib.contextmanager
    def export_mode(self, fmt: str) -> Iterator[str | None]:
        """The base hook, with the fused ONNX Runtime op (:mod:`.scan.ort_op`) as the scan when
        the ONNX export offers its domain and the kernel takes ``d_state``."""
        from flemme_core.export.modes import custom_domains

        from .scan import KERNEL_MAX_STATE
        from .scan.ort_op import DOMAIN

        with super().export_mode(fmt) as note:
            self.fused = DOMAIN in custom_domains() and self.d_state <= KERNEL_MAX_STATE
            try:
                yield self.fused_note if self.fused else note
            finally:
                self.fused = False

    def __init__(self, dims: int, width: int, *, d_state: int = 16, expand: float = 2.0,
                 dt_rank: int | None = None, d_conv: int = 3, scan: str = "cross+flip",
                 dropout: float = 0.0, backend: str = "auto"):
        super().__init__(dims, width, expand=expand, d_conv=d_conv, scan=scan, dropout=dropout)
        inner, k = self.inner, len(self.directions)
        rank = dt_rank or math.ceil(width / 16)
        self.rank, self.d_state, self.backend = rank, d_state, backend
        bound = inner ** -0.5  # nn.Linear's default init, per direction
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, inner).uniform_(-bound, bound))
        std = rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, rank).uniform_(-std, std))
        self.dt_projs_bias = nn.Parameter(dt_bias_init((k, inner)))
        self.A_log = nn.Parameter(a_log_init(k * inner, d_state))
        self.D = nn.Parameter(torch.ones(k * inner))

    def scan(self, xs: torch.Tensor) -> torch.Tensor:
        b, k, _, length = xs.shape
        x_dbl = torch.matmul(self.x_proj_weight, xs)                 # (B, K, R + 2N, L)
        dts, Bs, Cs = x_dbl.split([self.rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)                # (B, K, inner, L)
        args = (xs.reshape(b, k * self.inner, length), dts.reshape(b, k * self.inner, length),
                -torch.exp(self.A_log.float()), Bs, Cs, self.D.float())
        kwargs = {"delta_bias": self.dt_projs_bias.reshape(-1).float(), "delta_softplus": True}
        if self.exporting:
            from .scan.export_scan import selective_scan_export
            from .scan.ort_op import selective_scan_fused

            y = (selective_scan_fused if self.fused else selective_scan_export)(*args, **kwargs)
        else:
            y = selective_scan(*args, **kwargs, backend=self.backend)
        return y.reshape(b, k, self.inner, length)


class IdentityScanND(DirectionalMixer):
    """``mixer: identity``: the selective scan (its directions, x/dt projections, A, D) is the
    identity; in_proj, the depthwise conv + SiLU, LayerNorm, the SiLU(z) gate and out_proj
    stay, with the same parameter names as :class:`SelectiveScanND` and :class:`SSDMixerND`.

    The control of "nnU-Net Revisited" (Isensee et al., 2024), which asks whether the state
    space model earns its cost: what remains is a gated depthwise-conv unit.
    """

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)
