"""Fixtures of the flemme-pyramid tests: small models of every installed encoder family, a toy
third-party family. Everything is a fixture or a hook (the suite runs with --import-mode=importlib,
so test modules cannot import helpers from their folder)."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from flemme_core import hookimpl, register_plugin, unregister_plugin
from flemme_core.encoder import BlockFamily, ContextSequential, staged_encoder
from flemme_core.registry import get_registry


class _ToyBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x, context=None):
        return torch.relu(self.conv(x))


class ToyFamily(BlockFamily):
    """A third-party 2D family with its own refinement block (counts how often it is asked)."""

    name = "toy"
    refine_calls = 0

    def stem(self, in_channels, out_channels, patch_size):
        return nn.Conv2d(in_channels, out_channels, patch_size, stride=patch_size)

    def stage(self, in_channels, out_channels, num_blocks, drop_path=()):
        return ContextSequential(*[_ToyBlock(in_channels if i == 0 else out_channels, out_channels)
                                   for i in range(num_blocks)])

    def down(self, in_channels, out_channels, factor=2):
        return nn.Conv2d(in_channels, out_channels, factor, stride=factor)

    def up(self, in_channels, out_channels, factor=2):
        return nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor)

    def refine(self, channels):
        type(self).refine_calls += 1
        return ContextSequential(_ToyBlock(channels, channels))


toy_encoder = staged_encoder(ToyFamily)


@pytest.fixture
def toy_family():
    """Register the toy family like an installed third-party plugin would; yields its class."""
    plugin = types.SimpleNamespace(
        __name__="toy_plugin",
        register_encoders=hookimpl(lambda register: register("toy", toy_encoder, "toy family")))
    register_plugin(plugin, "toy-plugin")
    ToyFamily.refine_calls = 0
    yield ToyFamily
    unregister_plugin(plugin)


def pytest_generate_tests(metafunc):
    """``family``: every encoder family registered in this environment (cnn, vit, swin, ...)."""
    if "family" in metafunc.fixturenames:
        metafunc.parametrize("family", sorted(get_registry().components("encoder")))


def small_encoder(name: str) -> dict:
    """A cheap encoder config of any family: three levels, widths that attention heads divide."""
    return {"name": name, "channels": [32, 64, 128], "num_blocks": 1}


@pytest.fixture
def build_small():
    """``build_small(arch, family, dims, sizes)``: the smallest size the family accepts (window rules differ)."""
    return _build_small


def _build_small(arch: str, family: str, dims: int, sizes=(32, 64), **model):
    """The claim tested: ``arch`` builds wherever the plain ``unet`` builds with that family."""
    from flemme_core.build import build_model
    from flemme_core.errors import ConfigError, PluginError, ShapeError

    last = None
    for s in sizes:
        cfg = {"arch": arch, "encoder": small_encoder(family), "image_size": [s] * dims,
               "out_channels": 3 if arch == "hunet" else 1, **model}
        try:
            build_model({**cfg, "arch": "unet"})
        except ShapeError as exc:
            last = exc
            continue
        except PluginError as exc:  # registered but its code cannot be imported (a broken install)
            pytest.skip(f"{family} cannot be loaded: {exc}")
        except ConfigError as exc:  # e.g. a composite family that needs its branches named
            pytest.skip(f"{family} needs options a generic test cannot guess: {exc}")
        return build_model(cfg)
    pytest.skip(f"{family} accepts none of the sizes {sizes} in {dims}D: {last}")
