"""Scan inputs like Mamba's, shared by the flemme-mamba tests (a uniquely named module:
every plugin's tests run in one pytest)."""

from __future__ import annotations

import math

import torch


def mamba_dt_bias(channels: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    """Mamba's real dt init (softplus(bias) log-uniform in [1e-3, 0.1]), written out independently."""
    dt = torch.exp(torch.rand(channels, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


def scan_inputs(batch: int, groups: int, per_group: int, length: int, d_state: int, *,
                regime: str = "mamba", dtype: torch.dtype = torch.float32, ungrouped: bool = False,
                with_z: bool = True) -> dict:
    """Inputs of selective_scan in mamba-ssm's layout.

    regime 'mamba': delta from a projection plus Mamba's dt bias, softplus, S4D-real A;
    regime 'large': raw delta uniform in [0, 10] without softplus (decays underflow to 0).
    """
    channels = groups * per_group
    g = torch.Generator().manual_seed(1234 + length)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    A = -torch.arange(1, d_state + 1, dtype=torch.float64).repeat(channels, 1) * (1 + 0.1 * torch.rand(
        channels, d_state, generator=g, dtype=torch.float64))
    shape_bc = (batch, d_state, length) if ungrouped else (batch, groups, d_state, length)
    out = {"u": rnd(batch, channels, length), "A": A, "B": rnd(*shape_bc), "C": rnd(*shape_bc),
           "D": rnd(channels), "z": rnd(batch, channels, length) if with_z else None}
    if regime == "mamba":
        out["delta"] = 0.3 * rnd(batch, channels, length)
        out["delta_bias"] = mamba_dt_bias(channels)
        out["delta_softplus"] = True
    else:
        out["delta"] = 10 * torch.rand(batch, channels, length, generator=g, dtype=torch.float64)
        out["delta_bias"] = None
        out["delta_softplus"] = False
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


TENSOR_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
