"""The pidinet family under the encoder contract, and the official checkpoint layout."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from flemme_core import build_model
from flemme_core.errors import CheckpointError, ConfigError
from flemme_core.testing import check_reloads_without

TINY = {"name": "pidinet", "variant": "tiny"}  # C = 20, CDCM 8


def official_layout(c: int, dil: int, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an official PiDiNet ``carv4 --dil --sa`` state dict (as saved by its
    DataParallel training script, before the ``module.`` prefix), listed from the release."""
    shapes = {"init_block.weight": (c, in_channels, 3, 3)}
    widths = [c, 2 * c, 4 * c, 4 * c]
    for s, n in enumerate([3, 4, 4, 4], start=1):
        w = widths[s - 1]
        for j in range(1, n + 1):
            cin = widths[s - 2] if j == 1 and s > 1 else w
            if j == 1 and s > 1:
                shapes[f"block{s}_{j}.shortcut.weight"] = (w, cin, 1, 1)
                shapes[f"block{s}_{j}.shortcut.bias"] = (w,)
            shapes[f"block{s}_{j}.conv1.weight"] = (cin, 1, 3, 3)
            shapes[f"block{s}_{j}.conv2.weight"] = (w, cin, 1, 1)
    for i, w in enumerate(widths):
        shapes[f"conv_reduces.{i}.conv.weight"] = (1, dil, 1, 1)
        shapes[f"conv_reduces.{i}.conv.bias"] = (1,)
        shapes[f"attentions.{i}.conv1.weight"] = (4, dil, 1, 1)
        shapes[f"attentions.{i}.conv1.bias"] = (4,)
        shapes[f"attentions.{i}.conv2.weight"] = (1, 4, 3, 3)
        shapes[f"dilations.{i}.conv1.weight"] = (dil, w, 1, 1)
        shapes[f"dilations.{i}.conv1.bias"] = (dil,)
        for k in range(1, 5):
            shapes[f"dilations.{i}.conv2_{k}.weight"] = (dil, dil, 3, 3)
    shapes["classifier.weight"] = (1, 4, 1, 1)
    shapes["classifier.bias"] = (1,)
    return shapes


def fake_official_checkpoint(path, c=20, dil=8, drop=(), extra=()):
    torch.manual_seed(0)
    state = {f"module.{k}": 0.2 * torch.randn(shape) for k, shape in official_layout(c, dil).items() if k not in drop}
    state.update({f"module.{k}": torch.randn(2) for k in extra})
    torch.save({"epoch": 19, "state_dict": state}, path)
    return {k[len("module."):]: v for k, v in state.items()}


def pidinet(arch="unet", size=32, in_channels=1, **encoder):
    return build_model({"arch": arch, "image_size": size, "in_channels": in_channels, "out_channels": 2,
                        "encoder": {**TINY, **encoder}})


@pytest.mark.parametrize("variant,c,dil", [("tiny", 20, 8), ("small", 30, 12), ("pidinet", 60, 24)])
def test_official_checkpoint_loads_key_for_key(tmp_path, variant, c, dil):
    path = tmp_path / f"table5_{variant}.pth"
    state = fake_official_checkpoint(path, c, dil)
    enc = pidinet(in_channels=3, variant=variant, weights=str(path)).encoder
    own = enc.state_dict()
    assert set(own) == set(state)  # zero missing, zero unexpected
    assert all(torch.equal(own[k], state[k]) for k in state)


def test_one_channel_images_sum_the_rgb_filters(tmp_path):
    """smp's rule: the grey model on x equals the RGB model on x repeated three times."""
    path = tmp_path / "ckpt.pth"
    fake_official_checkpoint(path)
    grey = pidinet(in_channels=1, weights=str(path), normalize="none").encoder.eval()
    rgb = pidinet(in_channels=3, weights=str(path), normalize="none").encoder.eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        for a, b in zip(grey(x), rgb(x.repeat(1, 3, 1, 1))):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_converted_network_equals_the_pixel_difference_network(tmp_path):
    path = tmp_path / "ckpt.pth"
    fake_official_checkpoint(path)
    pdc = pidinet(in_channels=3, weights=str(path), features="side").encoder.eval()
    plain = pidinet(in_channels=3, weights=str(path), features="side", convert=True).encoder.eval()
    assert plain.block1_2.conv1.weight.shape[-1] == 5  # carv4: layer 2 is rd -> a 5×5 kernel
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(pdc(x), plain(x)):
            assert torch.allclose(a, b, atol=1e-4)


def test_wrong_checkpoint_is_one_line_naming_keys(tmp_path):
    path = tmp_path / "other.pth"
    fake_official_checkpoint(path, drop=("classifier.bias",), extra=("head.fc.weight",))
    with pytest.raises(CheckpointError, match=r"1 missing \(classifier.bias\); 1 unexpected \(head.fc.weight\)"):
        pidinet(in_channels=3, weights=str(path))
    fake_official_checkpoint(path, c=20, dil=8)
    with pytest.raises(CheckpointError, match="shape-mismatched.*looks like variant: tiny, dil: 8, sa: true"):
        pidinet(in_channels=3, weights=str(path), variant="small")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        pidinet(weights=str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        pidinet(weights=str(tmp_path / "nope.pth"))


def test_safetensors_weights_load_too(tmp_path):
    from safetensors.torch import save_file

    state = {k: torch.randn(s) for k, s in official_layout(20, 8).items()}
    save_file(state, str(tmp_path / "p.safetensors"))
    enc = pidinet(in_channels=3, weights=str(tmp_path / "p.safetensors")).encoder
    assert torch.equal(enc.block3_2.conv2.weight, state["block3_2.conv2.weight"])


@pytest.mark.parametrize("features,channels,strides", [
    ("stages", [20, 40, 80, 80], [1, 2, 4, 8]),
    ("side", [8, 8, 8, 8], [1, 2, 4, 8]),
    ("concat", [32], [8]),
])
def test_features_fine_to_coarse_with_declared_shapes(features, channels, strides):
    model = pidinet(features=features)
    enc = model.encoder
    assert enc.feature_channels == channels and enc.feature_strides == strides
    feats = enc(torch.rand(2, 1, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, c, 32 // s, 32 // s) for c, s in zip(channels, strides)]
    out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    out.square().mean().backward()
    idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not idle, idle
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == ({"conv_reduces", "classifier"} | ({"dilations", "attentions"} if features == "stages" else set()))


def test_mmfd_recipe_shape_at_512():
    """MMFD's PiDiNet branch: four side outputs resized and concatenated, [96, 64²] at 512²."""
    enc = pidinet(size=512, in_channels=3, variant="pidinet", features="concat").encoder
    assert enc.feature_channels == [96] and enc.feature_strides == [8]
    assert sum(p.numel() for p in enc.parameters()) == 710_149  # PiDiNet's published 710K


def test_edges_is_the_official_output():
    enc = pidinet().encoder
    maps = enc.edges(torch.rand(1, 1, 32, 32))
    assert len(maps) == 5 and all(m.shape == (1, 1, 32, 32) for m in maps)


def test_layer_ops_follow_carv4_and_custom_lists():
    enc = pidinet().encoder
    assert enc.layer_ops == ["cd", "ad", "rd", "cv"] * 4
    assert enc.block2_1.conv1.op == "cd" and enc.block1_2.conv1.op == "rd"
    custom = pidinet(channels=[8, 16], num_blocks=1, pdcs=["cv", "cd", "ad"]).encoder
    assert custom.layer_ops == ["cv", "cd", "ad"]
    with pytest.raises(ConfigError, match="lists 2 ops but the network has 3 layers"):
        pidinet(channels=[8, 16], num_blocks=1, pdcs=["cv", "cd"])
    with pytest.raises(ConfigError, match="did you mean 'carv4'"):
        pidinet(pdcs="carv")


def test_3d_and_context_are_one_line_refusals():
    with pytest.raises(ConfigError, match="2D only"):
        build_model({"arch": "unet", "image_size": [16, 16, 16], "encoder": TINY})
    from flemme_core.build import _encoder_builder
    from flemme_core.config import model_config_from_dict

    cfg = model_config_from_dict({"arch": "unet", "image_size": 32, "encoder": TINY})
    with pytest.raises(ConfigError, match="'pidinet' cannot inject one into its blocks"):
        _encoder_builder(cfg)(context_dim=8)
    for key, value in (("norm", "batch"), ("act", "gelu"), ("dropout", 0.1), ("drop_path", 0.1)):
        with pytest.raises(ConfigError, match=f"model.encoder.{key}: {value} is not pidinet's"):
            build_model({"arch": "unet", "image_size": 32, "encoder": {**TINY, key: value}})


def test_conformance_kit():
    """flemme_core.testing's checks for any family: the contract, common keys, save/load, unet and ae."""
    from flemme_core.testing import check_family

    check_family("pidinet", archs=["unet", "ae"])


@pytest.mark.slow
def test_conformance_kit_every_installed_architecture():
    """Those needing a context vector (ddpm, edm, sdm) must refuse it in one line."""
    from flemme_core.testing import check_family

    check_family("pidinet")


def test_checkpoint_round_trip_without_the_weights_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    fake_official_checkpoint(path)
    check_reloads_without(pidinet(in_channels=3, weights=str(path)), [path], torch.rand(1, 3, 32, 32), tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("flemme_pyramid") is None, reason="flemme-pyramid not installed")
def test_hunet_forward_backward():
    model = pidinet(arch="hunet", channels=[8, 16, 32], num_blocks=1)
    outs = model(torch.rand(2, 1, 32, 32))
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_as_an_mmfd_branch():
    pytest.importorskip("flemme_mmfd")
    model = build_model({"arch": "unet", "image_size": 32, "out_channels": 2, "encoder": {
        "name": "mmfd", "fusion": "sum", "anchor": "edges", "branches": [
            {"id": "edges", "name": "pidinet", "variant": "tiny", "features": "concat"},
            {"name": "cnn", "channels": [8, 16, 32, 64]}]}})
    assert model.encoder.feature_strides[0] == 8
    out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    out.mean().backward()
    assert model.encoder.branches[0].encoder.block4_4.conv2.weight.grad is not None
