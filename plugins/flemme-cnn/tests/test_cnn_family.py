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
@pytest.mark.parametrize("down,up", [("conv", "transpose"), ("pool", "interp"), ("conv", "deconv")])
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


@pytest.mark.parametrize("patch_size,kernel", [(2, 3), (4, 5), (3, 5)])
def test_conv_stem_overlaps_its_neighbours(patch_size, kernel):
    """``stem: conv`` (as MONAI's strided first unit) has a kernel wider than its stride, so
    neighbouring patches share pixels; ``stem: patch`` cuts the image into disjoint patches."""
    size = 12 * patch_size
    for stem, width in (("conv", kernel), ("patch", patch_size)):
        model = cnn(size=size, patch_size=patch_size, stem=stem, norm="none")
        assert model.encoder.stem[0].conv.kernel_size == (width, width)
        x = torch.randn(1, 1, size, size, requires_grad=True)
        assert model.encoder(x)[0].shape[-2:] == (12, 12)
        model.encoder.stem[0](x)[0, :, 5, 5].sum().backward()  # the pixels one stem output reads
        rows = x.grad[0, 0].abs().sum(1).nonzero().flatten()
        assert len(rows) == width


@pytest.mark.parametrize("factor", [2, 4])
def test_deconv_up_matches_conv_transpose_reference(factor):
    """``up: deconv`` is conv_transpose(kernel factor + 1, padding 1, output_padding 1) -> norm -> act:
    exactly ``factor`` times the input size, and checked against torch.nn.functional."""
    model = cnn(patch_size=factor, up="deconv", norm="none").eval()
    up = model.decoder.final_up
    conv = up[0].conv
    x = torch.randn(2, 8, 5, 7)
    ref = F.relu(F.conv_transpose2d(x, conv.weight, conv.bias, stride=factor, padding=1, output_padding=1))
    out = up(x)
    assert out.shape == (2, 8, 5 * factor, 7 * factor)
    assert torch.allclose(out, ref, atol=1e-6)
    assert model(torch.randn(1, 1, 8 * factor, 8 * factor)).shape == (1, 3, 8 * factor, 8 * factor)


def test_deconv_outputs_share_inputs_across_block_borders():
    """A kernel equal to the stride gives every output block its own input voxel (blocky
    boundaries); the overlapping deconv lets one output read two input voxels per axis."""
    for up, inputs_per_axis in (("transpose", 1), ("deconv", 2)):
        layer = cnn(up=up).decoder.ups[0]
        conv = layer if up == "transpose" else layer[0]  # the transposed convolution itself
        x = torch.zeros(1, 32, 6, 6, requires_grad=True)
        conv(x)[0, :, 5, 5].sum().backward()
        assert len(x.grad[0].abs().sum((0, 2)).nonzero()) == inputs_per_axis


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
                                                     "down": "pool", "up": "transpose", "norm": "instance"},
                         "image_size": 64})  # BasicUNet up-samples with kernel = stride
    monai = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(32, 32, 64, 128, 256, 32))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_monai = sum(p.numel() for p in monai.parameters())
    assert 0.8 < n_ours / n_monai < 1.3


@pytest.mark.parametrize("key,value,message", [
    ("block", "triple_conv", "did you mean"),
    ("down", "stride", "model.encoder.down"),
    ("up", "pixel_shuffle", "model.encoder.up"),
    ("stem", "conv7", "model.encoder.stem"),
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
