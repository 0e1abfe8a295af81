"""The encoder-less architecture contract: any plugin may register a whole network with
``register(name, factory, description, encoder=False)``; the core builds it with
``build_encoder=None``, refuses an encoder section for it in one line, and summary,
checkpoints, training and evaluation work without an encoder."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

import flemme_core
from flemme_core import build_model, load_model, save_model
from flemme_core.architectures.base import Architecture
from flemme_core.build import summarize, takes_encoder
from flemme_core.cli import main
from flemme_core.errors import ConfigError
from flemme_core.hookspecs import hookimpl
from flemme_core.registry import get_registry


@dataclasses.dataclass
class WholeOptions:
    width: int = 6


class WholeNet(Architecture):
    """conv -> batch norm -> relu -> 1×1 conv: a network that builds its own layers."""

    Options = WholeOptions

    def __init__(self, config, build_encoder):
        assert build_encoder is None
        super().__init__(config, build_encoder)
        conv = torch.nn.Conv2d if config.dims == 2 else torch.nn.Conv3d
        norm = torch.nn.BatchNorm2d if config.dims == 2 else torch.nn.BatchNorm3d
        w = self.options.width
        self.net = torch.nn.Sequential(conv(config.in_channels, w, 3, padding=1), norm(w), torch.nn.ReLU(),
                                       conv(w, config.out_channels, 1))

    def forward(self, x, context=None):
        return self.net(x)


class WholePlugin:
    @hookimpl
    def register_architectures(self, register):
        register("whole-net", WholeNet, "a whole network for the contract tests", encoder=False, widths="width")


@pytest.fixture(autouse=True, scope="module")
def _plugin():
    plugin = WholePlugin()
    flemme_core.register_plugin(plugin, name="whole-net-plugin")
    yield
    get_registry().unregister_plugin(plugin)


def test_built_without_an_encoder():
    model = build_model({"arch": "whole-net", "image_size": 16, "arch_options": {"width": 4}})
    assert not takes_encoder("whole-net") and takes_encoder("unet")
    assert model.encoder is None and model.config.encoder is None and model.options.width == 4
    s = summarize(model, batch_size=2)
    assert s["encoder"] is None and s["levels"] == [] and s["output_shapes"] == [[2, 2, 16, 16]]
    # MACs per sample by hand: 3×3 conv 1->4 and 1×1 conv 4->2 at every pixel
    assert s["macs_per_sample"] == 16 * 16 * (9 * 1 * 4 + 4 * 2)
    assert s["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("encoder", ["tiny", {"name": "tiny", "channels": [8, 16]}])
def test_an_encoder_section_is_refused_in_one_line(encoder):
    with pytest.raises(ConfigError, match=r"'whole-net' .* takes no encoder.*arch_options\.width") as err:
        build_model({"arch": "whole-net", "encoder": encoder})
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(main, ["build", "--arch", "whole-net", "--encoder", "tiny"])
    assert result.exit_code == 2 and result.output.startswith("Error:") and "takes no encoder" in result.output


def test_encoder_null_is_accepted():
    """A stored config says ``encoder: null``; building from it is the same model."""
    model = build_model({"arch": "whole-net", "encoder": None, "image_size": 16})
    assert model.config.to_dict()["encoder"] is None


def test_build_command_and_list():
    result = CliRunner().invoke(main, ["build", "--arch", "whole-net", "--image-size", "16"])
    assert result.exit_code == 0, result.output
    assert "(no encoder: a whole network)" in result.output and "MACs per sample" in result.output
    assert "levels" not in result.output
    listed = CliRunner().invoke(main, ["list", "architectures", "whole-*"])
    assert "(no encoder) a whole network" in listed.output
    doc = json.loads(CliRunner().invoke(main, ["list", "architectures", "--json"]).output)
    flags = {c["name"]: c["takes_encoder"] for c in doc["components"]}
    assert flags["whole-net"] is False and flags["unet"] is True


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    model = build_model({"arch": "whole-net", "image_size": 16})
    model.train()
    model(torch.randn(4, 1, 16, 16))  # non-trivial batch-norm statistics
    path = save_model(model, tmp_path / "w.safetensors")
    again = load_model(path)
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model.eval()(x), again.eval()(x))
    info = CliRunner().invoke(main, ["info", str(path)])
    assert info.exit_code == 0 and "whole-net (no encoder)" in info.output


def test_trains_and_evaluates(tmp_path):
    from flemme_core.training import train
    from flemme_core.training.config import run_config_from_dict

    run = run_config_from_dict({
        "model": {"arch": "whole-net"},
        "data": {"preset": "synthetic-2d", "options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]},
                 "patch_size": [32, 32], "batch_size": 2},
        "train": {"steps": 2, "val_every": 0, "threads": 1, "output": str(tmp_path / "run")}})
    summary = train(run, quiet=True)
    assert summary["final"] and (tmp_path / "run" / "last.safetensors").is_file()
    assert load_model(tmp_path / "run" / "last.safetensors").config.encoder is None
