"""Helpers for flemme-timm's tests: reference packages without torchvision, comparisons."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import pytest
import torch


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


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
