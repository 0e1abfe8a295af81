"""flemme-monai: MONAI's own networks, trained and evaluated by flemme, with no encoder.

The reference is MONAI itself: each flemme model's weights load into a network built directly
from ``monai.networks.nets`` and give the same output.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from monai.networks import nets

from flemme_core import build_model, load_model, save_model
from flemme_core.build import summarize, takes_encoder
from flemme_core.cli import main
from flemme_core.errors import ConfigError, ShapeError

#: name -> (tiny arch_options, (2D size, 3D size), MONAI class, its kwargs beside dims/channels)
TINY = {
    "monai-unet": ({"channels": [4, 8, 16], "num_res_units": 1}, (32, 16), nets.UNet,
                   {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1}),
    "monai-basicunet": ({"features": [4, 4, 8, 8, 16, 4]}, (32, 32), nets.BasicUNet,
                        {"features": (4, 4, 8, 8, 16, 4)}),
    "monai-dynunet": ({"filters": [8, 16, 16]}, (32, 16), nets.DynUNet,
                      {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2], "filters": [8, 16, 16]}),
    "monai-unetr": ({"hidden_size": 48, "num_heads": 4, "feature_size": 8}, (32, 16), nets.UNETR,
                    {"hidden_size": 48, "mlp_dim": 192, "num_heads": 4, "feature_size": 8}),
    "monai-swinunetr": ({"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}, (64, [64, 32, 32]), nets.SwinUNETR,
                        {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}),
}


def tiny(name: str, dims: int, **extra):
    options, sizes, _, _ = TINY[name]
    size = sizes[dims - 2]
    size = list(size) if isinstance(size, list) else [size] * dims
    cfg = {"arch": name, "dims": dims, "image_size": size, "in_channels": 1, "out_channels": 3,
           "arch_options": options, **extra}
    return build_model(cfg), size


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_builds_runs_and_trains_without_encoder(name, dims):
    model, size = tiny(name, dims)
    assert model.encoder is None and model.config.encoder is None and not takes_encoder(name)
    x = torch.randn(2, 1, *size)
    out = model(x)
    assert out.shape == (2, 3, *size) and torch.isfinite(out).all()
    out.square().mean().backward()
    # MONAI's TransformerBlock always creates a cross-attention norm that UNETR never uses
    without = [n for n, p in model.named_parameters() if p.grad is None and "norm_cross_attn" not in n]
    assert not without, without[:5]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_same_output_as_monai_built_directly(name, dims):
    """The weights load into MONAI's own class built with the documented arguments: same output."""
    model, size = tiny(name, dims)
    _, _, cls, kwargs = TINY[name]
    extra = {"img_size": tuple(size)} if cls is nets.UNETR else {}
    ref = cls(spatial_dims=dims, in_channels=1, out_channels=3, **kwargs, **extra)
    state = {k.removeprefix("net."): v for k, v in model.state_dict().items()}
    ref.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("name", sorted(TINY))
def test_checkpoint_round_trip_is_bit_exact(name, tmp_path):
    model, size = tiny(name, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_model(model, tmp_path / "m.safetensors")
    again = load_model(path)
    assert again.config == model.config and again.config.encoder is None
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


def test_an_encoder_for_a_whole_network_is_one_line_error():
    with pytest.raises(ConfigError, match=r"takes no encoder.*arch_options\.channels"):
        build_model({"arch": "monai-unet", "encoder": {"name": "cnn"}})
    result = CliRunner().invoke(main, ["build", "--arch", "monai-unet", "--encoder", "cnn"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "takes no encoder" in result.output


def test_bad_options_and_sizes_are_one_line_errors():
    with pytest.raises(ConfigError, match="did you mean 'channels'"):
        build_model({"arch": "monai-unet", "arch_options": {"chanels": [8, 16]}})
    with pytest.raises(ShapeError, match=r"divisible by 8 .*product of its strides.*--image-size 64,64"):
        build_model({"arch": "monai-unet", "image_size": 60})
    with pytest.raises(ConfigError, match="at least 3 levels"):
        build_model({"arch": "monai-dynunet", "image_size": 32, "arch_options": {"filters": [8, 16]}})
    with pytest.raises(ShapeError, match="one voxel at monai-basicunet's coarsest level"):
        build_model({"arch": "monai-basicunet", "image_size": [16, 16, 16]})
    with pytest.raises(ConfigError, match="multiple of 12"):
        build_model({"arch": "monai-swinunetr", "image_size": 64, "arch_options": {"feature_size": 16}})
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        build_model({"arch": "monai-unetr", "image_size": 32, "arch_options": {"hidden_size": 50}})
    with pytest.raises(ConfigError, match=r"monai.networks.nets.UNet refused"):
        build_model({"arch": "monai-unet", "image_size": 32, "arch_options": {"act": "nonsense"}})
    model, _ = tiny("monai-unet", 2)
    with pytest.raises(ShapeError, match="no context"):
        model(torch.randn(1, 1, 32, 32), torch.randn(1, 4))


def test_flemme_build_and_list():
    result = CliRunner().invoke(main, ["build", "--arch", "monai-unet", "--dims", "3", "--image-size", "64"])
    assert result.exit_code == 0, result.output
    assert "(no encoder" in result.output and "monai.networks.nets.UNet(channels=(16, 32, 64, 128)" in result.output
    assert "MACs per sample" in result.output and "total stride 8" in result.output
    doc = json.loads(CliRunner().invoke(main, ["build", "--arch", "monai-unet", "--image-size", "32", "--json"]).output)
    assert doc["encoder"] is None and doc["levels"] == [] and doc["macs_per_sample"] > 0
    # the reference row of the protocol: MONAI UNet 16-32-64-128, 2 residual units
    assert doc["parameters"] == sum(p.numel() for p in nets.UNet(2, 1, 2, (16, 32, 64, 128), (2, 2, 2),
                                                                 num_res_units=2).parameters())
    listed = json.loads(CliRunner().invoke(main, ["list", "architectures", "monai-*", "--json"]).output)
    rows = {c["name"]: c for c in listed["components"]}
    assert set(rows) == set(TINY) and all(not r["takes_encoder"] for r in rows.values())
    assert all(r["distribution"] == "flemme-monai" for r in rows.values())


def test_macs_match_a_hand_count():
    """A 1×1-conv-only network: MACs are in × out × voxels; UNet's count is dominated by its convs."""
    from flemme_core.build import macs_per_sample

    conv = torch.nn.Conv3d(2, 5, kernel_size=1)
    assert macs_per_sample(conv, torch.randn(3, 2, 4, 4, 4)) == 2 * 5 * 64


def test_short_flemme_train_and_eval(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--arch", "monai-unet", "--data", "synthetic-2d", "--steps", "3", "-q", "--batch-size", "2",
        "-o", str(out), "--set", "arch_options.channels=[4,8]", "--set", "data.patch_size=[32,32]",
        "--set", "data.options={num_train: 2, num_held_out: 1, size: [32, 32]}", "--set", "train.val_every=0",
        "--set", "train.threads=1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and "dice" in summary["final"]
    model = load_model(out / "last.safetensors")
    assert model.config.arch == "monai-unet" and model.options.channels == [4, 8]
    evaluated = CliRunner().invoke(main, ["eval", str(out / "last.safetensors"), "--json", str(tmp_path / "e.json")])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["dice"] == pytest.approx(
        summary["final"]["dice"], abs=1e-6)
    assert summarize(model)["parameters"] == sum(p.numel() for p in model.parameters())
