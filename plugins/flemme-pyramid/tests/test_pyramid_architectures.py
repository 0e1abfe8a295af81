"""hunet / hae: level shapes for every family in 2D and 3D, options, norms, gradients, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flemme_core.build import build_model, loss_spec, summarize
from flemme_core.errors import ConfigError
from flemme_core.losses import build_loss
from flemme_core.registry import get_registry

CNN = {"name": "cnn", "channels": [8, 16, 32], "num_blocks": 1, "patch_size": 1, "block": "double_conv", "norm": "batch"}


def _expected_strides(model) -> list[int]:
    enc = model.encoder
    strides = list(enc.feature_strides)  # fine to coarse, the last is the bottleneck
    # levels: every decoder stage's stride plus the bottleneck, except the one feeding the head
    return strides[1:] if strides[0] == 1 else strides


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", ["hunet", "hae"])
def test_level_shapes_every_family(family, arch, dims, build_small):
    model = build_small(arch, family, dims, sizes=(16, 32, 64) if dims == 3 else (32, 64))
    size = model.config.image_size
    x = torch.randn(2, 1, *size)
    model.eval()
    with torch.no_grad():
        outs = model(x)
    out_ch = model.config.out_channels
    strides = _expected_strides(model)
    assert [tuple(o.shape) for o in outs] == (
        [(2, out_ch, *size)] + [(2, out_ch, *[s // st for s in size]) for st in strides])
    assert torch.equal(model.predict(x), outs[0])
    assert summarize(model)["output_shapes"][0] == [1, out_ch, *size]


def test_third_party_family_provides_the_refinement_block(toy_family):
    model = build_model({"arch": "hunet", "image_size": [32, 32], "out_channels": 2,
                         "encoder": {"name": "toy", "channels": [8, 16, 32], "num_blocks": 1, "patch_size": 2}})
    # patch size 2: the decoder ends with a patch expansion, so every stage and the bottleneck are levels
    assert toy_family.refine_calls == 3
    outs = model(torch.randn(1, 1, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_cnn_3d_shapes_and_patchified_levels():
    model = build_model({"arch": "hae", "encoder": {"name": "cnn", "channels": [4, 8, 16], "patch_size": 2},
                         "image_size": [16, 16, 16], "out_channels": 1})
    outs = model(torch.randn(1, 1, 16, 16, 16))
    assert [tuple(o.shape) for o in outs] == [(1, 1, 16, 16, 16), (1, 1, 8, 8, 8), (1, 1, 4, 4, 4), (1, 1, 2, 2, 2)]


def _cnn(arch="hunet", **options):
    return build_model({"arch": arch, "encoder": CNN, "image_size": [32, 32],
                        "out_channels": 2 if arch == "hunet" else 1, "arch_options": options})


@pytest.mark.parametrize("options", [
    {"refine": False}, {"fusion": "sum"}, {"resize": "nearest"}, {"level_map": "channel"},
    {"fusion_init": "random"},
    {"level_map": "none", "fusion": "sum", "refine": False},
])
def test_options_build_run_and_train(options):
    model = _cnn(**options)
    criterion = build_loss("dice_ce", 2, 2)
    batch = {"image": torch.randn(2, 1, 32, 32), "label": torch.randint(0, 2, (2, 1, 32, 32))}
    loss, logged = model.training_loss(batch, criterion)
    loss.backward()
    assert torch.isfinite(loss) and set(logged) == {"loss_fused", "loss_level1_16x16", "loss_level2_8x8"}


def test_hae_options_of_ae_still_apply():
    model = _cnn("hae", skip=True, supervised=True, target_resize="linear")
    assert model.decoder.skip
    x, clean = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert torch.equal(model.inputs_and_target({"image": x, "label": clean})[1], clean)
    loss, logged = model.training_loss({"image": x, "label": clean}, build_loss("l1", 1, 2))
    assert torch.isfinite(loss) and "loss_level2_8x8" in logged


def test_refinement_off_has_no_refinement_parameters():
    on, off = _cnn(refine=True), _cnn(refine=False)
    assert sum(p.numel() for p in off.pyramid.refines.parameters()) == 0
    assert sum(p.numel() for p in on.pyramid.refines.parameters()) > 0
    assert [tuple(o.shape) for o in off(torch.randn(1, 1, 32, 32))] == [(1, 2, 32, 32), (1, 2, 16, 16), (1, 2, 8, 8)]


@pytest.mark.parametrize("norm, cls", [("instance", nn.InstanceNorm2d), ("batch", nn.BatchNorm2d),
                                       ("group", nn.GroupNorm)])
def test_refinement_honours_the_encoder_normalisation(norm, cls):
    model = build_model({"arch": "hunet", "encoder": {**CNN, "norm": norm},
                         "image_size": [32, 32]})
    kinds = {type(m) for m in model.pyramid.refines.modules()
             if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm))}
    assert kinds == {cls}


@pytest.mark.parametrize("arch", ["hunet", "hae"])
@pytest.mark.parametrize("level_weights", ["equal", "halving"])
@pytest.mark.parametrize("fusion_init", ["plain", "random"])
def test_gradient_reaches_every_level_head(arch, level_weights, fusion_init):
    torch.manual_seed(0)
    model = _cnn(arch, level_weights=level_weights, fusion_init=fusion_init)
    criterion = build_loss(loss_spec(model), model.config.out_channels, 2)
    x = torch.rand(2, 1, 32, 32)
    batch = {"image": x, "label": (x > 0.5).long()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # halving drops the coarsest level's own term: its head learns through the fusion, whose
    # weights on the levels start at 0 with the plain init and move after the first step
    for _ in range(2):
        optimizer.zero_grad()
        loss, _ = model.training_loss(batch, criterion)
        loss.backward()
        optimizer.step()
    for i, head in enumerate(model.pyramid.heads):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, f"level head {i}"
    for name, p in model.named_parameters():
        if name.startswith(("pyramid.", "fusion.", "head.")):
            assert p.grad is not None, name


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_plain_fusion_init_starts_from_the_plain_output(fusion):
    model = _cnn(fusion=fusion).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        levels = model.decoder(model.encoder(x))
        full = model.head(levels[-1])
        outs = model(x)
        if fusion == "concat":
            torch.testing.assert_close(outs[0], full)
        else:  # the mean of the normal output and the up-sampled level predictions
            ups = [full] + [torch.nn.functional.interpolate(p, size=[32, 32], mode="bilinear") for p in outs[1:]]
            torch.testing.assert_close(outs[0], torch.stack(ups).mean(0))


def test_config_naming_the_pyramid_loss_is_not_wrapped_twice():
    model = _cnn(level_weights="equal")
    criterion = build_loss({"name": "pyramid", "losses": ["ce"], "level_weights": "halving"}, 2, 2)
    assert model.pyramid_loss(criterion) is criterion
    batch = {"image": torch.randn(1, 1, 32, 32), "label": torch.randint(0, 2, (1, 1, 32, 32))}
    loss, logged = model.training_loss(batch, criterion)
    assert "loss_level1_16x16" in logged and torch.isfinite(loss)


def test_bad_options_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="fusion"):
        _cnn(fusion="stack")
    with pytest.raises(ConfigError, match="refin"):
        _cnn(refinement=False)
    with pytest.raises(ConfigError, match="target_resize"):
        _cnn(target_resize="area")  # images only: class labels cannot be averaged
    with pytest.raises(ConfigError, match="at least 2 levels"):
        build_model({"arch": "hunet", "encoder": {"name": "cnn", "channels": [8], "patch_size": 1}, "image_size": [16, 16]})


def test_registered_through_the_entry_point():
    reg = get_registry()
    for kind, name in [("architecture", "hunet"), ("architecture", "hae"), ("loss", "pyramid")]:
        assert reg.provider_of(kind, name).name == "flemme-pyramid"


def test_checkpoint_round_trip(tmp_path):
    from flemme_core.checkpoint import load_model, save_model

    model = _cnn("hae", fusion="sum", level_weights="halving")
    with torch.no_grad():
        model.fusion.maps.normal_()  # non-default values must survive
    model.eval()
    path = save_model(model, tmp_path / "hae.safetensors")
    loaded = load_model(path).eval()
    assert type(loaded).__name__ == "HAE" and loaded.options == model.options
    x = torch.randn(1, 1, 32, 32)
    for a, b in zip(model(x), loaded(x)):
        torch.testing.assert_close(a, b)


def test_context_reaches_the_refinement_blocks():
    """A conditioned subclass (as a diffusion model would build): levels depend on the context."""
    from flemme_pyramid.architectures import HUNet

    from flemme_core.build import _encoder_builder, as_model_config

    class ConditionedHUNet(HUNet):
        def encoder_overrides(self):
            return {"context_dim": 4}

    cfg = as_model_config({"arch": "hunet", "encoder": CNN, "image_size": [16, 16]})
    model = ConditionedHUNet(cfg, _encoder_builder(cfg)).eval()
    x, c = torch.randn(1, 1, 16, 16), torch.randn(1, 4)
    a, b = model(x, c), model(x, c + 1)
    assert not torch.allclose(a[1], b[1])  # the finest level's refinement injected the context
    # refinement alone (decoder features fixed) depends on the context too
    feature = torch.randn(1, 16, 8, 8)
    refine = model.pyramid.refines[-1]
    assert not torch.allclose(refine(feature, c), refine(feature, c + 1))
