"""The cnn family's options, shapes and numerics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

from flemme_core import build_model
from flemme_core.errors import ConfigError


def cnn(dims=2, size=32, **encoder):
    enc = {"name": "cnn", "channels": [8, 16, 32], "patch_size": 1, "block": "double_conv", "norm": "batch", **encoder}
    return build_model({"arch": "unet", "encoder": enc, "dims": dims, "image_size": size, "out_channels": 3})


@pytest.mark.parametrize("block", ["conv", "double_conv", "res_conv"])
@pytest.mark.parametrize("down,up", [("conv", "transpose"), ("pool", "interp")])
@pytest.mark.parametrize("dims", [2, 3])
def test_every_option_combination_runs(block, down, up, dims):
    size = 32 if dims == 2 else 16
    model = cnn(dims, size, block=block, down=down, up=up, norm="group", act="silu", dropout=0.1)
    out = model(torch.randn(2, 1, *[size] * dims))
    assert out.shape == (2, 3, *[size] * dims)


def test_blocks_have_the_documented_number_of_convolutions():
    def convs(model):
        return sum(isinstance(m, torch.nn.Conv2d) for m in model.encoder.stages[1].modules())

    assert convs(cnn(block="conv")) == 1
    assert convs(cnn(block="double_conv")) == 2
    assert convs(cnn(block="res_conv", channels=[8, 16, 32])) == 2  # same width: identity shortcut


def test_patch_size_makes_a_strided_stem():
    model = cnn(patch_size=2)
    feats = model.encoder(torch.randn(1, 1, 32, 32))
    assert [f.shape[-1] for f in feats] == [16, 8, 4]
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_res_conv_is_a_residual_block():
    """With its convolutions' last norm zeroed, a same-width res_conv block is the identity."""
    model = cnn(block="res_conv", norm="batch").eval()
    block = model.encoder.stages[1][0]
    last_norm = block.units[-1][1]
    torch.nn.init.zeros_(last_norm.weight)
    torch.nn.init.zeros_(last_norm.bias)
    block.units[-1][3] = torch.nn.Identity()  # drop the final activation so the branch is exactly zero
    x = torch.randn(1, 16, 8, 8)
    assert torch.allclose(block(x), x)


def test_conv_block_matches_functional_reference():
    """conv -> batch norm (eval) -> ReLU, checked against torch.nn.functional with the same weights."""
    model = cnn(block="conv", norm="batch").eval()
    unit = model.encoder.stages[0][0].units[0]
    conv, bn = unit[0].conv, unit[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 1, 16, 16)
    ref = F.relu(F.batch_norm(F.conv2d(x, conv.weight, conv.bias, padding=1), bn.running_mean,
                              bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
    assert torch.allclose(unit(x), ref, atol=1e-6)


def test_basic_unet_topology_matches_monai_within_a_few_percent():
    """Configured like MONAI's BasicUNet the parameter count is close (1×1 projections differ)."""
    ours = build_model({"arch": "unet", "encoder": {"name": "cnn", "channels": [32, 32, 64, 128, 256],
                                                     "down": "pool", "norm": "instance"}, "image_size": 64})
    monai = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(32, 32, 64, 128, 256, 32))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_monai = sum(p.numel() for p in monai.parameters())
    assert 0.8 < n_ours / n_monai < 1.3


@pytest.mark.parametrize("key,value,message", [
    ("block", "triple_conv", "did you mean"),
    ("down", "stride", "model.encoder.down"),
    ("up", "deconv", "model.encoder.up"),
    ("kernel_size", 4, "must be odd"),
])
def test_bad_options(key, value, message):
    with pytest.raises(ConfigError, match=message):
        cnn(**{key: value})


def test_cnn_conv_stack_matches_functional_reference():
    """A 1-level cnn 'unet' with conv blocks is a conv-norm-relu stack: compare with a hand-built
    torch reference carrying the same weights."""
    model = build_model({"arch": "ae", "encoder": {"name": "cnn", "channels": [4], "block": "conv", "patch_size": 1,
                                                   "norm": "none"}, "out_channels": 1, "image_size": 8})
    model.eval()
    x = torch.randn(1, 1, 8, 8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    ref = x
    for conv in convs[:-1]:
        ref = torch.relu(torch.nn.functional.conv2d(ref, conv.weight, conv.bias, padding=1))
    ref = torch.nn.functional.conv2d(ref, convs[-1].weight, convs[-1].bias)
    assert torch.allclose(model(x), ref, atol=1e-6)


def test_defaults_cost_about_what_monai_unet_costs():
    """The defaults (issue 15): 16-32-64-128, stride-2 stem, residual blocks, instance norm; a 3D
    48³ forward costs at most 1.5× the MACs of MONAI's UNet 16-32-64-128 with 2 residual units
    (the earlier defaults cost 36×), counted by the same counter."""
    from monai.networks.nets import UNet

    from flemme_core.build import macs_per_sample

    model = build_model({"arch": "unet", "encoder": "cnn", "dims": 3, "image_size": 48, "out_channels": 4})
    cfg = model.encoder.config
    assert (cfg.channels, cfg.patch_size, cfg.norm) == ([16, 32, 64, 128], 2, "instance")
    assert model.encoder.blocks.options.block == "res_conv"
    x = torch.randn(1, 1, 48, 48, 48)
    ours = macs_per_sample(model, x)
    peer = macs_per_sample(UNet(3, 1, 4, (16, 32, 64, 128), (2, 2, 2), num_res_units=2), x)
    assert ours <= 1.5 * peer, (ours, peer)
