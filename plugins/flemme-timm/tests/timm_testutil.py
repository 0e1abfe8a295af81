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


def per_head_rows(heads: int, key_dim: int, v_dim: int) -> tuple[list[int], list[int], list[int]]:
    """The (q, k, v) output rows of a fused qkv laid out per head, as TinyViT reshapes it
    (``view(B, N, heads, -1).split([key_dim, key_dim, v_dim])``): head h owns the
    ``2·key_dim + v_dim`` rows from ``h·(2·key_dim + v_dim)``, its q first, then k, then v."""
    width = 2 * key_dim + v_dim
    return ([h * width + i for h in range(heads) for i in range(key_dim)],
            [h * width + key_dim + i for h in range(heads) for i in range(key_dim)],
            [h * width + 2 * key_dim + i for h in range(heads) for i in range(v_dim)])


def thirds_rows(width: int) -> tuple[list[int], list[int], list[int]]:
    """The (q, k, v) output rows of a fused qkv in thirds, as SAM's ViT reshapes it (3, heads, d)."""
    return list(range(width)), list(range(width, 2 * width)), list(range(2 * width, 3 * width))


def randomise_lora(model: torch.nn.Module, std: float = 0.1) -> list[str]:
    """Non-zero B in every linear adapter (fused qkv, or a separate q/v projection; A is random
    already), so LoRA changes the outputs; returns the adapted layers' names."""
    from flemme_core.lora import LoRALinear, LoRAQKV

    names = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (LoRAQKV, LoRALinear)):
                for b in module.lora_b.modules():
                    if isinstance(b, torch.nn.Linear):
                        b.weight.normal_(0, std)
                names.append(name)
    return names


def merge_lora_qv(adapted: torch.nn.Module, reference: torch.nn.Module, rows, rank: int, alpha: float,
                  rename=lambda name: name) -> None:
    """The independent reference of LoRA ``qv``: each fused adapter of ``adapted`` merged into the
    plain ``nn.Linear`` of ``reference`` named ``rename(name)``: ``(alpha / rank)·B·A`` added to its
    weight at the q and v rows that ``rows(name)`` lists by hand (the k rows left as they are; an
    empty q list is a layer without queries, whose one pair is then v's). A separate q/v projection's
    adapter is merged into all of its rows."""
    from flemme_core.lora import LoRALinear, LoRAQKV

    with torch.no_grad():
        for name, module in adapted.named_modules():
            linear = reference.get_submodule(rename(name)) if isinstance(module, (LoRAQKV, LoRALinear)) else None
            if isinstance(module, LoRAQKV):
                q, _, v = rows(name)
                for part_rows, a, b in zip([r for r in (q, v) if r], module.lora_a, module.lora_b):
                    linear.weight[part_rows] += alpha / rank * b.weight @ a.weight
            elif isinstance(module, LoRALinear):
                linear.weight += alpha / rank * module.lora_b.weight @ module.lora_a.weight
