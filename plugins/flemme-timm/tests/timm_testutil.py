"""Helpers for flemme-timm's tests: reference packages without torchvision, comparisons."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import pytest
import torch

from flemme_core.build import _encoder_builder
from flemme_core.config import model_config_from_dict


def segment_anything_modeling():
    """segment_anything.modeling without the package's __init__ (which imports torchvision through
    its predictor and mask generator; the model code itself does not need it)."""
    if "segment_anything.modeling" in sys.modules:
        return sys.modules["segment_anything.modeling"], sys.modules["segment_anything.build_sam"]
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        pytest.skip("segment-anything is not installed (flemme-timm[test])")
    try:
        import segment_anything  # noqa: F401 - works where torchvision does
    except Exception:  # noqa: BLE001
        for name in [n for n in sys.modules if n.startswith("segment_anything")]:
            del sys.modules[name]
        package = types.ModuleType("segment_anything")
        package.__path__ = [os.path.dirname(spec.origin)]
        sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling"), importlib.import_module("segment_anything.build_sam")


def build_encoder(name: str, options: dict, in_channels: int = 3, size: int = 64) -> torch.nn.Module:
    """The ``name`` family's encoder as a ``unet`` config at ``size``² builds it, in eval mode (the
    families' reference comparisons are on deterministic forwards)."""
    cfg = model_config_from_dict({"arch": "unet", "image_size": size, "in_channels": in_channels,
                                  "encoder": {"name": name, **options}})
    return _encoder_builder(cfg)().eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
