"""Every installed encoder family × every core architecture × 2D/3D builds, runs forward
and backward with the right shapes, and honours the contract (features fine to coarse)."""

from __future__ import annotations

import pytest
import torch
from model_configs import tiny_model_config

from flemme_core import build_model
from flemme_core.build import summarize
from flemme_core.encoder import Encoder
from flemme_core.errors import ConfigError, ShapeError
from flemme_core.registry import get_registry

FAMILIES = sorted(get_registry().components("encoder"))
CORE_ARCHS = ["unet", "ae"]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", CORE_ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_arch_forward_backward(family, arch, dims):
    size = 32 if dims == 2 else 16
    model = build_model(tiny_model_config(family, arch, dims, size))
    x = torch.randn(2, 1, *[size] * dims)
    out = model(x)
    assert out.shape == (2, 2, *[size] * dims)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if arch == "ae":
        # Without skips only the bottleneck feeds the decoder; a fusion encoder's side levels
        # may then be idle. Everything outside the encoder must still train.
        without_grad = [n for n in without_grad if not n.startswith("encoder.")]
        assert any(p.grad is not None for p in model.encoder.parameters())
    assert not without_grad, f"parameters that got no gradient: {without_grad[:5]}"


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_contract(family):
    model = build_model(tiny_model_config(family))
    enc = model.encoder
    assert isinstance(enc, Encoder)
    feats = enc(torch.randn(1, 1, 32, 32))
    assert len(feats) == len(enc.feature_channels) == len(enc.feature_strides)
    assert enc.feature_strides == sorted(enc.feature_strides), "features must go fine to coarse"
    for f, c, s in zip(feats, enc.feature_channels, enc.feature_strides):
        assert f.shape == (1, c, 32 // s, 32 // s), "channels-first, declared channels and stride"


@pytest.mark.parametrize("family", FAMILIES)
def test_context_vector_changes_output(family):
    """Every block accepts the context: a model built with context_dim reacts to it."""
    from flemme_core.build import _encoder_builder
    from flemme_core.config import model_config_from_dict

    cfg = model_config_from_dict(tiny_model_config(family))
    enc = _encoder_builder(cfg)(context_dim=8).eval()
    x = torch.randn(2, 1, 32, 32)
    a = enc(x, torch.zeros(2, 8))[-1]
    b = enc(x, torch.ones(2, 8))[-1]
    assert not torch.allclose(a, b)
    with pytest.raises(ShapeError, match="context"):
        enc(x)


def test_summary_reports_levels_and_defaults():
    model = build_model({"arch": "unet", "encoder": "tiny"})
    s = summarize(model)
    assert s["input_shape"] == [1, 1, 128, 128] and s["output_shapes"] == [[1, 2, 128, 128]]
    assert [lvl["stride"] for lvl in s["levels"]] == [1, 2, 4, 8] and s["total_stride"] == 8
    assert s["levels"][-1]["shape"] == [1, 256, 16, 16]
    assert s["resolved_encoder"]["channels"] == [32, 64, 128, 256]
    assert s["parameters"] == sum(p.numel() for p in model.parameters())


def test_unknown_family_option_lists_close_matches():
    with pytest.raises(ConfigError, match="did you mean 'kernel_size'"):
        build_model({"arch": "unet", "encoder": {"name": "tiny", "kernel_sise": 3}})


def test_num_blocks_per_level_must_match_levels():
    with pytest.raises(ConfigError, match="one number or one per level"):
        build_model({"arch": "unet", "encoder": {"name": "tiny", "channels": [8, 16], "num_blocks": [1, 1, 1]}})
