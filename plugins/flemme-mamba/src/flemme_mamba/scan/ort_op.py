"""The selective scan as one fused ONNX Runtime op, ``flemme.mamba::SelectiveScan``.

ONNX has no operator for the scan; the portable export (:mod:`.export_scan`) writes it as an
ONNX ``Scan`` whose step graph ONNX Runtime interprets once per time step, 1.6x slower than
eager PyTorch with the C++ kernel. This module gives the exporter and ONNX Runtime the C++
kernel itself:

* ``csrc/ort_selective_scan.cpp`` wraps the forward of ``csrc/selective_scan.cpp`` (included,
  not copied) in ONNX Runtime's C custom-op ABI; :func:`library_path` compiles it like the
  ctypes kernel (:mod:`.build`: system compiler, cached per source/compiler/CPU, one-line
  :class:`~.build.KernelUnavailable` without a compiler);
* the torch custom op ``flemme_mamba::selective_scan`` (eager: the same kernel as training and
  inference; under tracing: its shape only) stands for the kernel in the exported program,
  and :func:`translations` maps it to the ONNX op for torch.onnx;
* :func:`onnx_ops` is what the ``register_onnx_ops`` hook registers for the domain.

The op computes ``y = scan(u, dt, A, B, C) + D u`` in float32 for final step sizes; the
softplus of ``delta + delta_bias`` and the ``silu(z)`` gate are ordinary ONNX ops around it
(:func:`selective_scan_fused`), as the eager path runs them around the ctypes kernel.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .build import BASE_FLAGS, SOURCE, KernelUnavailable, build_library

if TYPE_CHECKING:
    import torch

DOMAIN = "flemme.mamba"
OP = "SelectiveScan"
ORT_SOURCE = Path(__file__).with_name("csrc") / "ort_selective_scan.cpp"
# No OpenMP: the op runs its tasks in ONNX Runtime's own thread pool.
ORT_FLAG_CHOICES = [BASE_FLAGS + ["-fvisibility=hidden", "-march=native"], BASE_FLAGS + ["-fvisibility=hidden"]]
TORCH_OP = "flemme_mamba::selective_scan"


def _check_library(path: Path) -> str:
    """Load the built library once (no undefined symbols: it needs no libonnxruntime)."""
    lib = ctypes.CDLL(str(path))
    if not hasattr(lib, "RegisterCustomOps"):
        raise KernelUnavailable(f"{path} exports no RegisterCustomOps; delete {path.parent}")
    return str(path)


@functools.lru_cache(maxsize=1)
def library_path() -> str:
    """The ONNX Runtime custom-op library (built on first call), or KernelUnavailable."""
    return build_library([ORT_SOURCE, SOURCE], "ort_selective_scan.so", ORT_FLAG_CHOICES, _check_library)


@functools.lru_cache(maxsize=1)
def torch_op() -> Any:
    """``torch.ops.flemme_mamba.selective_scan``, defined on first use (a torch custom op with a
    fake implementation, so torch.export keeps it as one node)."""
    import torch

    @torch.library.custom_op(TORCH_OP, mutates_args=(),  # schema given: annotations are strings here
                             schema="(Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor D) -> Tensor")
    def selective_scan_op(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        from . import selective_scan

        return selective_scan(u, dt, A, B, C, D)

    @selective_scan_op.register_fake
    def _(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
          D: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(u)

    return torch.ops.flemme_mamba.selective_scan.default


def translations() -> dict[Any, Any]:
    """torch.onnx ``custom_translation_table`` entries: the torch op -> one ``SelectiveScan`` node."""
    from onnx.defs import OpSchema
    from onnxscript import values

    param = OpSchema.FormalParameter
    schema = OpSchema(OP, DOMAIN, 1, doc="y = selective scan of (u, dt, A, B, C) + D u (csrc/ort_selective_scan.cpp)",
                      inputs=[param(name, "T") for name in ("u", "dt", "A", "B", "C", "D")],
                      outputs=[param("y", "T")], type_constraints=[("T", ["tensor(float)"], "float32")])
    op = values.Op(values.Opset(DOMAIN, 1), OP, schema)

    def selective_scan_onnx(u: Any, dt: Any, A: Any, B: Any, C: Any, D: Any) -> Any:  # onnxscript values
        return op(u, dt, A, B, C, D)

    return {torch_op(): selective_scan_onnx}


def onnx_ops() -> Any:
    """The ``register_onnx_ops`` factory: this domain's library and translations."""
    from flemme_core.export.custom_ops import OnnxCustomOps

    return OnnxCustomOps(DOMAIN, library_path, translations)


def selective_scan_fused(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """Same contract as :func:`.reference.selective_scan_ref`, in float32, the recurrence as the
    torch op (one ``SelectiveScan`` node in ONNX), the element-wise parts around it."""
    from .contract import scan_inputs, scan_output
    from .export_scan import softplus

    dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias = (t.float() if t is not None else None
                                           for t in (u, delta, A, B, C, D, z, delta_bias))
    delta, B, C, _ = scan_inputs(u, delta, A, B, C, delta_bias, False)    # B, C: (b, G, N, L)
    if delta_softplus:
        delta = softplus(delta)
    if D is None:
        D = u.new_zeros(u.shape[1])
    y = torch_op()(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                   D.contiguous())                                       # the recurrence + D u
    return scan_output(y, u, None, z).to(dtype)


__all__ = ["DOMAIN", "OP", "library_path", "onnx_ops", "selective_scan_fused", "torch_op", "translations"]
