"""flemme_core.testing, the plugin authors' conformance kit: it passes an honest family and
fails one that ignores ``norm``, ``act``, ``dropout`` or the context, or lies about its shapes."""

from __future__ import annotations

import types

import pytest
import tiny_family
from torch import nn

import flemme_core
from flemme_core import hookimpl
from flemme_core.encoder import ContextSequential, staged_encoder
from flemme_core.testing import (
    ConformanceError,
    check_architectures,
    check_common_keys,
    check_context,
    check_contract,
    check_family,
    check_save_load,
)


class IgnoresNorm(tiny_family.TinyFamily):
    """Hard-codes its normalisation, as the example template once did."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.cfg = type(cfg)(**{**cfg.__dict__, "norm": "batch"})


class IgnoresAct(tiny_family.TinyFamily):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.cfg = type(cfg)(**{**cfg.__dict__, "act": "relu"})


class IgnoresDropout(tiny_family.TinyFamily):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.cfg = type(cfg)(**{**cfg.__dict__, "dropout": 0.0})


class _Unconditioned(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x, context=None):
        return self.block(x)  # drops the context


class IgnoresContext(tiny_family.TinyFamily):
    def stage(self, in_channels, out_channels, num_blocks, drop_path=()):
        inner = super().stage(in_channels, out_channels, num_blocks, drop_path)
        for block in inner:
            block.context = None
        return ContextSequential(*[_Unconditioned(b) for b in inner])


class WrongStride(tiny_family.TinyFamily):
    def down(self, in_channels, out_channels, factor=2):
        return super().down(in_channels, out_channels, factor * 2)  # declares 2, applies 4


FAMILIES = {"bad_norm": IgnoresNorm, "bad_act": IgnoresAct, "bad_dropout": IgnoresDropout,
            "bad_context": IgnoresContext, "bad_stride": WrongStride}


@pytest.fixture(scope="module")
def bad_plugin():
    def register_encoders(register):
        for name, cls in FAMILIES.items():
            register(name, staged_encoder(cls), "a deliberately broken family")

    plugin = types.SimpleNamespace(register_encoders=hookimpl(register_encoders))
    flemme_core.register_plugin(plugin, name="bad-families")
    yield
    flemme_core.unregister_plugin(plugin)


def test_an_honest_family_passes_every_check():
    check_family("tiny", archs=["unet", "ae"])


@pytest.mark.slow
def test_an_honest_family_passes_with_every_installed_architecture():
    check_family("tiny")


@pytest.mark.parametrize(("family", "check", "needle"), [
    ("bad_norm", check_common_keys, "norm: instance builds the same network as norm: batch"),
    ("bad_act", check_common_keys, "act: gelu builds the same network as act: relu"),
    ("bad_dropout", check_common_keys, "dropout: 0.5 changes nothing"),
    ("bad_context", check_context, "does not change with the context"),
    ("bad_stride", check_contract, "channels 32 and stride 2 declare"),
])
def test_a_family_that_ignores_a_rule_fails(bad_plugin, family, check, needle):
    with pytest.raises(ConformanceError, match=needle):
        check(family)
    with pytest.raises(ConformanceError, match=f"encoder family '{family}'"):
        check_family(family, archs=["unet"])


def test_context_given_but_not_passed_must_raise(bad_plugin):
    """A family whose blocks run without the context they were built for fails."""

    class Silent(tiny_family.TinyFamily):
        def stage(self, *args, **kwargs):
            stage = super().stage(*args, **kwargs)
            for block in stage:
                ctx = block.context
                block.context = None if ctx is None else _Optional(ctx)
            return stage

    class _Optional(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, context):
            return x if context is None else self.inner(x, context)

    plugin = types.SimpleNamespace(register_encoders=hookimpl(
        lambda register: register("bad_silent", staged_encoder(Silent), "runs unconditioned")))
    flemme_core.register_plugin(plugin, name="silent-family")
    try:
        with pytest.raises(ConformanceError, match="must raise ShapeError"):
            check_context("bad_silent")
    finally:
        flemme_core.unregister_plugin(plugin)


def test_each_check_runs_alone():
    check_contract("tiny", dims=[2])
    check_architectures("tiny", archs=["unet"], dims=[3])
    check_save_load("tiny", dims=[2])


def test_unknown_family_is_one_line():
    with pytest.raises(flemme_core.PluginError, match="did you mean 'tiny'"):
        check_family("tinyy")


def test_a_plugins_own_exception_is_one_line_naming_it():
    """A bug inside a plugin's family (not a user mistake) is `error in plugin <name>: ...`."""
    from click.testing import CliRunner

    from flemme_core.cli import main

    class Broken(tiny_family.TinyFamily):
        def stage(self, *args, **kwargs):
            raise KeyError("width_table")

    plugin = types.SimpleNamespace(register_encoders=hookimpl(
        lambda register: register("bad_bug", staged_encoder(Broken), "raises inside")))
    flemme_core.register_plugin(plugin, name="flemme-buggy")
    try:
        with pytest.raises(flemme_core.PluginError, match=r"error in plugin flemme-buggy: KeyError: 'width_table'"):
            from flemme_core import build_model

            build_model({"arch": "unet", "encoder": "bad_bug", "image_size": 16})
        result = CliRunner().invoke(main, ["build", "--encoder", "bad_bug", "--image-size", "16"])
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code != 0 and len(errors) == 1 and "error in plugin flemme-buggy" in errors[0]
        assert "Traceback" not in result.output
    finally:
        flemme_core.unregister_plugin(plugin)
