"""The selective scan and the choice of kernel.

``selective_scan`` has the contract of mamba-ssm's ``selective_scan_fn`` (same argument
names and layouts, B/C grouped per scan direction) and picks a backend per call:

* ``mamba_ssm``: mamba-ssm's CUDA kernel, when it imports and the tensors are on CUDA;
* ``cpp``: this plugin's C++ kernel, for CPU tensors (compiled on first use);
* ``torch``: the pure-PyTorch chunked scan, anywhere (no compiler, or CUDA without mamba-ssm).

Both kernels hold the state of a channel in registers / shared memory and take at most
``KERNEL_MAX_STATE`` = 256 states (N, ``d_state``); ``auto`` runs larger states in the
PyTorch scan, which has no limit, and an explicit ``cpp`` / ``mamba_ssm`` refuses them.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

from flemme_core.config import choice

BACKENDS = ("auto", "mamba_ssm", "cpp", "torch")
KERNEL_MAX_STATE = 256  # N (d_state) the C++ kernel (8-float vectors, 32 of them) and mamba-ssm take


@functools.lru_cache(maxsize=1)
def mamba_ssm_scan() -> Any:
    """mamba-ssm's ``selective_scan_fn`` if it imports (it needs CUDA), else None."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - missing, or installed without working CUDA extensions
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=1)
def cpp_problem() -> str:
    """Why the C++ kernel cannot be used here ('' when it can); builds it on first call."""
    from .build import kernel_problem

    return kernel_problem()


def select_backend(device: torch.device | str, requested: str = "auto", d_state: int = 16) -> str:
    """The backend a call on ``device`` with ``d_state`` states uses; an explicit request is
    honoured or refused."""
    from flemme_core.errors import ConfigError

    choice(requested, BACKENDS, "model.encoder.backend")
    device = torch.device(device)
    if d_state > KERNEL_MAX_STATE:
        if requested in ("cpp", "mamba_ssm"):
            raise ConfigError(f"backend {requested!r} takes d_state up to {KERNEL_MAX_STATE}, got {d_state}; "
                              f"use backend: auto or torch (the PyTorch scan has no limit)")
        return "torch"
    if requested == "mamba_ssm":
        if mamba_ssm_scan() is None or device.type != "cuda":
            raise ConfigError("backend 'mamba_ssm' needs CUDA tensors and mamba-ssm; "
                              "pip install 'flemme-mamba[cuda]' or use backend: auto")
        return requested
    if requested == "cpp":
        problem = cpp_problem()
        if device.type != "cpu" or problem:
            raise ConfigError(f"backend 'cpp' runs on CPU tensors with a C++ compiler "
                              f"({problem or 'tensors are on ' + device.type}); use backend: auto")
        return requested
    if requested == "torch":
        return requested
    if device.type == "cuda" and mamba_ssm_scan() is not None:
        return "mamba_ssm"
    if device.type == "cpu":
        problem = cpp_problem()
        if not problem:
            return "cpp"
        _warn_once(f"flemme-mamba: the C++ scan kernel is unavailable ({problem}); "
                   f"using the slower pure-PyTorch scan")
    return "torch"


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def describe_backend(requested: str = "auto", d_state: int = 16) -> str:
    """One line for the build summary: what runs on CPU and on CUDA."""
    if d_state > KERNEL_MAX_STATE:
        return f"PyTorch chunked scan (d_state {d_state} > {KERNEL_MAX_STATE}, the kernels' limit)"
    if requested != "auto":
        return {"mamba_ssm": "mamba-ssm CUDA kernel", "cpp": "flemme C++ CPU scan",
                "torch": "PyTorch chunked scan"}[requested]
    cpu = "flemme C++ CPU scan" if not cpp_problem() else "PyTorch chunked scan (no C++ kernel)"
    cuda = "mamba-ssm" if mamba_ssm_scan() is not None else "PyTorch chunked scan (mamba-ssm not installed)"
    return f"cpu: {cpu}; cuda: {cuda}"


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   backend: str = "auto") -> torch.Tensor:
    """out = scan over L of h_t = exp(dt A) h_{t-1} + dt B_t u_t, y = C_t . h_t + D u (times silu(z)).

    u, delta, z: (batch, K*D, L); A: (K*D, N); B, C: (batch, K, N, L) (or (batch, N, L));
    D, delta_bias: (K*D,); dt = softplus(delta + delta_bias) when ``delta_softplus``.
    """
    name = select_backend(u.device, backend, A.shape[1])
    if name == "mamba_ssm":
        return mamba_ssm_scan()(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(),
                                C.contiguous(), D, z, delta_bias, delta_softplus)
    if name == "cpp":
        from .cpu import selective_scan_cpp

        return selective_scan_cpp(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    from .torch_scan import selective_scan_torch

    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
