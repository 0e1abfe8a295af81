"""Each public hook, exercised end to end through an explicitly registered plugin."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import flemme_core
from flemme_core import build_model, hookimpl
from flemme_core.architectures.base import Architecture
from flemme_core.losses import build_loss
from flemme_core.registry import get_registry


class MeanHeadArch(Architecture):
    """A toy architecture: global average of the bottleneck, as a 1×1 'image'."""

    task = "reconstruction"

    def __init__(self, config, build_encoder):
        super().__init__(config, build_encoder)
        self.head = nn.Linear(self.encoder.feature_channels[-1], config.out_channels)

    def forward(self, x, context=None):
        f = self.encoder(x, context)[-1].flatten(2).mean(-1)
        return self.head(f)


class MaxFusion(nn.Module):
    def __init__(self, channels, num_branches, dims):
        super().__init__()

    def forward(self, features):
        return torch.stack(features).amax(0)


def abs_error(out_channels, dims, scale=1.0):
    class AbsError(nn.Module):
        def forward(self, pred, target):
            return scale * (pred - target).abs().mean()

    return AbsError()


def toy_dataset(size=4):
    return {"train": list(range(size)), "held_out": [size]}


@pytest.fixture
def toy_plugin():
    plugin = types.SimpleNamespace(
        register_encoders=hookimpl(lambda register: register(
            "tiny_alias", lambda cfg: get_registry().get("encoder", "tiny").load()(cfg), "the tiny family again")),
        register_architectures=hookimpl(lambda register: register("meanhead", MeanHeadArch, "toy")),
        register_losses=hookimpl(lambda register: register("abs_error", abs_error, "toy")),
        register_fusions=hookimpl(lambda register: register("max", MaxFusion, "elementwise max")),
        register_datasets=hookimpl(lambda register: register("toy-set", toy_dataset, "four items", dims=2)),
    )
    flemme_core.register_plugin(plugin, name="toy-plugin")
    yield plugin
    flemme_core.unregister_plugin(plugin)


def test_register_encoders(toy_plugin):
    model = build_model({"arch": "unet", "encoder": {"name": "tiny_alias", "channels": [4, 8]}, "image_size": 16})
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)
    assert get_registry().get("encoder", "tiny_alias").provider.name == "toy-plugin"


def test_register_architectures(toy_plugin):
    model = build_model({"arch": "meanhead", "encoder": {"name": "tiny", "channels": [4, 8]},
                         "image_size": 16, "out_channels": 3})
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    assert get_registry().get("architecture", "meanhead").provider.name == "toy-plugin"


def test_register_losses(toy_plugin):
    loss = build_loss([{"name": "abs_error", "weight": 2.0, "scale": 0.5}, "mse"], out_channels=1, dims=2)
    pred, target = torch.zeros(3), torch.ones(3)
    assert float(loss(pred, target)) == pytest.approx(2.0 * 0.5 * 1.0 + 1.0)
    assert loss.last == {"abs_error": 0.5, "mse": 1.0}


def test_register_fusions(toy_plugin):
    fuse = get_registry().get("fusion", "max").load()(channels=2, num_branches=2, dims=2)
    a, b = torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3)
    assert torch.equal(fuse([a, b]), b)


def test_register_datasets(toy_plugin):
    factory = get_registry().get("dataset", "toy-set").load()
    assert factory(size=2) == {"train": [0, 1], "held_out": [2]}
    assert get_registry().get("dataset", "toy-set").metadata == {"dims": 2}
