"""Every installed encoder family honours the contract (features fine to coarse, context), the
core architectures train with the test suite's family, and the build summary and errors hold."""

from __future__ import annotations

import pytest

from flemme_core import build_model
from flemme_core.build import summarize
from flemme_core.errors import ConfigError
from flemme_core.registry import get_registry
from flemme_core.testing import check_architectures, check_context, check_contract

FAMILIES = sorted(get_registry().components("encoder"))

CORE_ARCHS = ["unet", "ae"]


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_contract(family):
    """Every installed family: features fine to coarse with the declared channels and strides
    (flemme_core.testing; each plugin's own tests run the whole kit, architectures included)."""
    check_contract(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_context_vector_changes_output(family):
    """Every block accepts the context: a model built with context_dim reacts to it."""
    check_context(family)


@pytest.mark.parametrize("arch", CORE_ARCHS)
def test_core_architectures_train_with_the_tiny_family(arch):
    check_architectures("tiny", archs=[arch])


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


def test_unet_head_width_widens_the_full_resolution_level():
    import torch

    cfg = {"arch": "unet", "encoder": {"name": "tiny", "channels": [8, 16], "patch_size": 2},
           "image_size": [32, 32], "out_channels": 5}
    plain, wide = build_model(cfg), build_model({**cfg, "arch_options": {"head_width": 24}})
    assert plain.head.in_channels == 8 and wide.head.in_channels == 24
    x = torch.randn(2, 1, 32, 32)
    assert wide(x).shape == plain(x).shape == (2, 5, 32, 32)
    # by default at least as wide as the classes (117 AAL classes off 16 channels learnt ~10x slower)
    many = build_model({**cfg, "out_channels": 12})
    assert many.head.in_channels == 12 and many(x).shape == (2, 12, 32, 32)
    with pytest.raises(ConfigError, match="patch_size 1"):
        build_model({**cfg, "encoder": {"name": "tiny", "channels": [8, 16], "patch_size": 1},
                     "arch_options": {"head_width": 24}})


def test_unet_head_kernel_3_keeps_the_output_size_and_odd_kernels_only():
    import torch

    cfg = {"arch": "unet", "encoder": {"name": "tiny", "channels": [8, 16]}, "image_size": [32, 32],
           "out_channels": 3, "arch_options": {"head_kernel": 3}}
    model = build_model(cfg)
    assert model.head.kernel_size == (3, 3)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ConfigError, match="head_kernel must be an odd positive integer"):
        build_model({**cfg, "arch_options": {"head_kernel": 2}})
