"""The mmfd fusion encoder: alignment of mixed grids and widths, anchors, freezing, LoRA."""

from __future__ import annotations

import pytest
import torch
from mmfd_testutil import probe

from flemme_core import build_model
from flemme_core.build import build_encoder
from flemme_core.config import EncoderConfig, encoder_config_from_dict
from flemme_core.errors import ConfigError, PluginError, ShapeError
from flemme_core.lora import LoRAConv, LoRALinear, add_lora

FUSIONS = ["sum", "concat", "gated", "share_token"]
SMALL_TOKENS = {"share_token": {"num_tokens": 8, "depth": 2}}


def fused(dims: int, size: int, branches: list, **options) -> torch.nn.Module:
    spec = {"name": "mmfd", "branches": branches, **options}
    cfg = encoder_config_from_dict(spec)
    cfg.dims, cfg.image_size, cfg.in_channels = dims, [size] * dims, 1
    enc = build_encoder(cfg)
    enc.check_image_size(cfg.image_size)
    return enc


MIXED = [probe(4, 32, id="fine"), probe(8, 96, id="mid"), probe(16, 768, id="coarse")]


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 32)])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_mixed_grids_and_widths_align_and_fuse(dims, size, fusion):
    enc = fused(dims, size, MIXED, channels=[16, 24, 32], fusion=fusion,
                fusion_options=SMALL_TOKENS.get(fusion, {}))
    assert enc.feature_strides == [4, 8, 16] and enc.feature_channels == [16, 24, 32]
    x = torch.randn(2, 1, *[size] * dims)
    feats = enc(x)
    for f, c, s in zip(feats, enc.feature_channels, enc.feature_strides):
        assert f.shape == (2, c, *[size // s] * dims)
        assert torch.isfinite(f).all()
    sum(f.square().mean() for f in feats).backward()
    # every branch's aligner receives gradient: all branches take part at every level
    for per_branch in enc.aligners:
        for aligner in per_branch:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aligner.parameters())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_residual_branch_passes_through_until_its_scales_move(dims, fusion):
    """residual: the fused levels are the branch's own features at first (zero scales), on the
    branch's grid and widths, with the other branches resampled onto it once the scales move."""
    branches = [probe(8, 96, id="mid"), {"name": "cnn", "id": "main", "channels": [8, 16, 24], "norm": "group"},
                probe(16, 768, id="coarse")]
    enc = fused(dims, 32, branches, residual="main", fusion=fusion, fusion_options=SMALL_TOKENS.get(fusion, {}))
    main = enc.branches[1].encoder
    assert enc.feature_strides == main.feature_strides and enc.feature_channels == main.feature_channels
    x = torch.randn(2, 1, *[32] * dims)
    for got, own in zip(enc(x), main(x)):
        assert torch.equal(got, own)
    with torch.no_grad():
        for scale in enc.residual_scales:
            scale.fill_(0.5)
    assert all(not torch.allclose(got, own) for got, own in zip(enc(x), main(x)))


@pytest.mark.parametrize("anchor,strides", [("finest", [4, 8, 16]), ("coarsest", [16]), ("mid", [8, 16]),
                                            (2, [2, 4, 8, 16])])
def test_anchor_grid_is_chosen_by_config(anchor, strides):
    enc = fused(2, 64, MIXED, anchor=anchor)
    assert enc.feature_strides == strides
    # default widths: the widest branch feature feeding each level (every branch feeds every level)
    assert enc.feature_channels == [768] * len(strides)
    feats = enc(torch.randn(1, 1, 64, 64))
    assert [f.shape[-1] for f in feats] == [64 // s for s in strides]


def test_branch_levels_pick_nearest_stride():
    enc = fused(2, 64, [{"name": "probe", "strides": [2, 4, 8, 16], "widths": [4, 8, 16, 32]},
                        {**probe(16, 8), "levels": "last"}], anchor=4, channels=[8, 8])
    assert enc.picks == [[1, 2], [0, 0]]
    enc = fused(2, 64, [{"name": "probe", "strides": [2, 4, 8, 16], "widths": [4, 8, 16, 32], "levels": "last"}],
                anchor=4, channels=[8, 8])
    assert enc.picks == [[3, 3]]


def test_value_of_sum_fusion_matches_manual_alignment():
    """Independent reference: conv-aligned branches, area-resized and summed, by hand."""
    enc = fused(2, 32, [probe(4, 6), probe(8, 10)], anchor=8, channels=[5], align="conv", fusion="sum")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        f0 = enc.branches[0].encoder(x)[0]
        f1 = enc.branches[1].encoder(x)[0]
        a0 = torch.nn.functional.avg_pool2d(enc.aligners[0][0](f0), 2)
        a1 = enc.aligners[1][0](f1)
        assert torch.allclose(enc(x)[0], a0 + a1, atol=1e-5)


def test_frozen_branch_gets_no_gradient_and_keeps_statistics():
    model = build_model({"arch": "unet", "image_size": [32, 32], "encoder": {
        "name": "mmfd", "branches": [{"name": "cnn", "channels": [8, 16], "freeze": True},
                                     {"name": "cnn", "channels": [8, 16, 32]}]}})
    model.train()
    frozen, free = model.encoder.branches
    stats = {k: v.clone() for k, v in frozen.state_dict().items()}
    model(torch.randn(2, 1, 32, 32)).square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert all(p.grad is not None for p in free.parameters())
    assert not frozen.encoder.training and free.encoder.training
    assert all(torch.equal(stats[k], v) for k, v in frozen.state_dict().items())  # BatchNorm stats kept


def test_zero_initialised_lora_leaves_outputs_unchanged():
    torch.manual_seed(0)
    enc = fused(2, 32, [{"name": "cnn", "channels": [8, 16], "norm": "group"}, probe(8, 12)], channels=[8, 8])
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = enc(x)
    wrapped = add_lora(enc.branches[0].encoder, rank=2, alpha=4.0, targets=["conv"])
    wrapped += add_lora(enc.branches[1].encoder, rank=2, alpha=4.0, targets=["linear"])
    assert wrapped and any("linears" in w for w in wrapped)
    with torch.no_grad():
        after = enc(x)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # the adapters are wired: moving B changes the output
    lora = next(m for m in enc.modules() if isinstance(m, (LoRALinear, LoRAConv)))
    torch.nn.init.normal_(lora.lora_b.weight)
    with torch.no_grad():
        assert not all(torch.allclose(a, b) for a, b in zip(enc(x), before))


def test_frozen_branch_with_lora_trains_only_the_adapters():
    enc = fused(2, 32, [{**probe(4, 8), "freeze": True, "lora": {"rank": 2, "targets": ["linears"]}}], channels=[8])
    branch = enc.branches[0]
    trainable = {n for n, p in branch.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    enc(torch.randn(1, 1, 32, 32))[0].sum().backward()
    assert all(p.grad is not None for n, p in branch.named_parameters() if n in trainable)
    assert all(p.grad is None for n, p in branch.named_parameters() if n not in trainable)


def test_lora_matches_an_explicit_low_rank_update():
    lin = torch.nn.Linear(6, 5)
    wrapped = LoRALinear(lin, rank=2, alpha=3.0)
    torch.nn.init.normal_(wrapped.lora_b.weight)
    x = torch.randn(4, 6)
    delta = wrapped.lora_b.weight @ wrapped.lora_a.weight * (3.0 / 2)
    assert torch.allclose(wrapped(x), x @ (lin.weight + delta).T + lin.bias, atol=1e-5)


def test_input_normalisation_is_per_branch():
    enc = fused(2, 32, [{**probe(4, 8), "normalize": "zscore"}, {**probe(4, 8), "normalize": {"mean": [5.0],
                                                                                               "std": [2.0]}}],
                channels=[8])
    x = torch.randn(2, 1, 32, 32) * 3 + 5
    z = enc.branches[0].adapter(x)
    assert torch.allclose(z.mean((2, 3)), torch.zeros(2, 1), atol=1e-5)
    assert torch.allclose(enc.branches[1].adapter(x), (x - 5) / 2)


def test_branch_input_size_and_rgb_branch():
    enc = fused(2, 64, [probe(4, 8), {**probe(8, 8), "input_size": [32, 32], "in_channels": 3}], channels=[8])
    assert enc.branches[1].strides == [16.0]
    assert enc.branches[1].encoder.in_channels == 3
    assert enc(torch.randn(1, 1, 64, 64))[0].shape == (1, 8, 16, 16)


def test_third_party_fusion_strategy_through_the_hook():
    enc = fused(2, 32, [probe(4, 8), probe(8, 8)], channels=[8], anchor=4, fusion="max")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        a = [enc.aligners[0][0](enc.branches[0].encoder(x)[0]),
             torch.nn.functional.interpolate(enc.aligners[1][0](enc.branches[1].encoder(x)[0]), size=(8, 8),
                                             mode="bilinear", align_corners=False)]
        assert torch.allclose(enc(x)[0], torch.maximum(*a), atol=1e-6)


def test_configuration_mistakes_are_one_line_errors():
    with pytest.raises(PluginError, match="did you mean 'gated'"):
        fused(2, 32, [probe(4, 8)], fusion="gatd")
    with pytest.raises(ConfigError, match="freez"):
        fused(2, 32, [{**probe(4, 8), "frezee": True}])
    with pytest.raises(ConfigError, match="branch id"):
        fused(2, 32, [probe(4, 8)], anchor="nope")
    with pytest.raises(ConfigError, match="at least one"):
        fused(2, 32, [])
    with pytest.raises(ConfigError, match="share_token"):
        fused(2, 32, [probe(4, 8)], fusion="share_token", fusion_options={"tokens": 3})
    with pytest.raises(ShapeError, match="divisible"):
        fused(2, 36, [probe(4, 8), probe(8, 8)], anchor=4)


def test_fused_encoder_presents_the_encoder_contract():
    enc = fused(2, 32, [{"name": "cnn", "channels": [8, 16]}, probe(4, 8)], decoder_family={"name": "cnn",
                                                                                            "block": "res_conv"})
    assert isinstance(enc.config, EncoderConfig) and enc.config.channels == enc.feature_channels
    assert enc.blocks.options.block == "res_conv"
    assert ("fusion", "sum") in enc.components() and ("encoder", "probe") in enc.components()
