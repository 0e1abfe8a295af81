"""Import timm without torchvision.

timm's model code does not need torchvision, but its package imports do: ``timm.layers``
takes ``FrozenBatchNorm2d`` from ``torchvision.ops.misc`` and ``timm.models`` imports
``timm.data``, whose ``__init__`` pulls torchvision's datasets and transforms (checked on
timm 0.9.16 to 1.0.31). Where torchvision is not importable (PyPI's torchvision does not
import beside a CPU build of torch such as the one flemme's CI uses), :func:`import_timm`
imports timm once with, *during that import only*,

* ``torchvision.ops.misc.FrozenBatchNorm2d``: :class:`FrozenBatchNorm2d` below, the same
  computation and state-dict layout as torchvision's, used by timm only when asked to
  freeze batch norms;
* ``timm.data``: the package without its ``__init__`` (its constants and submodules stay
  importable; the torchvision-based transforms and loaders do not, and flemme uses neither).

The stand-in torchvision modules are removed from ``sys.modules`` afterwards, so nothing
else sees a torchvision that is not there. Where torchvision works, timm is imported as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (torchvision.ops.misc's layout)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _torchvision_works() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.ops.misc")
        return True
    except Exception:  # noqa: BLE001 - installed but broken (built for another torch)
        _purge("torchvision")
        return False


def _purge(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def _stand_ins(timm_dir: str) -> dict[str, types.ModuleType]:
    vision = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")
    vision.__path__, ops.__path__ = [], []  # submodules other than ops.misc stay missing (ImportError)
    misc.FrozenBatchNorm2d = FrozenBatchNorm2d  # type: ignore[attr-defined]
    vision.ops, ops.misc = ops, misc  # type: ignore[attr-defined]
    data = types.ModuleType("timm.data")
    data.__path__ = [os.path.join(timm_dir, "data")]
    return {"torchvision": vision, "torchvision.ops": ops, "torchvision.ops.misc": misc, "timm.data": data}


def import_timm() -> types.ModuleType:
    """The ``timm`` module, imported without needing torchvision (see the module docstring)."""
    if "timm" in sys.modules and hasattr(sys.modules["timm"], "create_model"):
        return sys.modules["timm"]
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        from flemme_core.errors import PluginError

        raise PluginError("timm is not installed; `pip install --no-deps timm huggingface_hub` (flemme-timm needs "
                          "no torchvision) or `pip install timm` where torchvision matches your torch")
    if _torchvision_works():
        return importlib.import_module("timm")
    _purge("timm")
    stand_ins = _stand_ins(os.path.dirname(spec.origin))
    sys.modules.update(stand_ins)
    try:
        constants = importlib.import_module("timm.data.constants")
        stand_ins["timm.data"].__dict__.update({k: v for k, v in vars(constants).items() if k.isupper()})
        return importlib.import_module("timm")
    except BaseException:
        _purge("timm")
        raise
    finally:
        for name in ("torchvision.ops.misc", "torchvision.ops", "torchvision"):
            if sys.modules.get(name) is stand_ins[name]:
                del sys.modules[name]
