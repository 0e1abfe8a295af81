"""Discovery through entry points: faked distributions (as pytest tests its own plugin
loading), a really installed package, broken-plugin isolation, conflicts, env switches."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest
from model_configs import requires_encoders

from flemme_core import hookimpl, registry
from flemme_core.errors import PluginError
from flemme_core.registry import Registry


class FakeDist:
    """Enough of importlib.metadata.Distribution for the registry."""

    def __init__(self, name: str, version: str, entry_points: dict[str, str]):
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = [EntryPoint(ep, value, "flemme") for ep, value in entry_points.items()]


def make_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, func in hooks.items():
        setattr(module, hook_name, hookimpl(func))
    sys.modules[name] = module
    return module


@pytest.fixture
def fake_dists(monkeypatch):
    """Replace the installed distributions with the given fake ones."""
    created: list[str] = []

    def install(*dists: FakeDist) -> Registry:
        monkeypatch.setattr(registry.importlib_metadata, "distributions", lambda: list(dists))
        return Registry()

    yield install
    for name in created:
        sys.modules.pop(name, None)


def _encoders(register):
    register("toy", "flemme_toy:factory", "a toy family")


def test_fake_distribution_is_discovered_with_its_version(fake_dists):
    make_module("flemme_toy_plugin", register_encoders=_encoders)
    reg = fake_dists(FakeDist("flemme-toy", "1.2.3", {"toy": "flemme_toy_plugin"}))
    comp = reg.get("encoder", "toy")
    assert (comp.provider.name, comp.provider.version, comp.provider.entry_point) == ("flemme-toy", "1.2.3", "toy")
    assert comp.description == "a toy family"
    # the core's own components come through the same hooks
    assert reg.get("architecture", "unet").provider.name == "flemme-core"


def test_plugin_that_fails_to_import_is_reported_and_others_still_work(fake_dists):
    make_module("flemme_good_plugin", register_encoders=_encoders)
    reg = fake_dists(FakeDist("flemme-broken", "0.1", {"broken": "flemme_does_not_exist_xyz"}),
                     FakeDist("flemme-good", "0.2", {"good": "flemme_good_plugin"}))
    assert reg.get("encoder", "toy").provider.name == "flemme-good"
    problems = reg.problems()
    assert len(problems) == 1
    assert "flemme-broken" in problems[0] and "ModuleNotFoundError" in problems[0]


def test_plugin_whose_hook_raises_is_isolated(fake_dists):
    def bad(register):
        raise RuntimeError("boom in hook")

    make_module("flemme_raising_plugin", register_encoders=bad, register_losses=lambda register: register(
        "toy_loss", "x:y", "still registered"))
    make_module("flemme_good_plugin2", register_encoders=_encoders)
    reg = fake_dists(FakeDist("flemme-raising", "0.1", {"r": "flemme_raising_plugin"}),
                     FakeDist("flemme-good", "0.2", {"g": "flemme_good_plugin2"}))
    assert "toy" in reg.components("encoder")
    assert "toy_loss" in reg.components("loss")  # its other hooks still count
    assert any("flemme-raising" in p and "boom in hook" in p for p in reg.problems())


def test_duplicate_name_names_both_distributions(fake_dists):
    make_module("flemme_dup_a", register_encoders=_encoders)
    make_module("flemme_dup_b", register_encoders=_encoders)
    reg = fake_dists(FakeDist("flemme-a", "1.0", {"a": "flemme_dup_a"}),
                     FakeDist("flemme-b", "2.0", {"b": "flemme_dup_b"}))
    with pytest.raises(PluginError) as err:
        reg.get("encoder", "toy")
    message = str(err.value)
    assert "flemme-a 1.0" in message and "flemme-b 2.0" in message and "FLEMME_DISABLE_PLUGINS" in message
    assert any("registered by both" in p for p in reg.problems())


def test_disable_named_plugin_with_environment(fake_dists, monkeypatch):
    make_module("flemme_dup_c", register_encoders=_encoders)
    make_module("flemme_dup_d", register_encoders=_encoders)
    monkeypatch.setenv("FLEMME_DISABLE_PLUGINS", "flemme-d")
    reg = fake_dists(FakeDist("flemme-c", "1.0", {"c": "flemme_dup_c"}),
                     FakeDist("flemme-d", "1.0", {"d": "flemme_dup_d"}))
    assert reg.get("encoder", "toy").provider.name == "flemme-c"
    assert not reg.problems()


def test_disable_autoload_keeps_builtins_and_named_plugins(fake_dists, monkeypatch):
    make_module("flemme_auto_e", register_encoders=_encoders)
    monkeypatch.setenv("FLEMME_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = fake_dists(FakeDist("flemme-e", "1.0", {"e": "flemme_auto_e"}))
    assert "toy" not in reg.components("encoder")
    assert "unet" in reg.components("architecture")
    monkeypatch.setenv("FLEMME_PLUGINS", "flemme-e")
    reg = fake_dists(FakeDist("flemme-e", "1.0", {"e": "flemme_auto_e"}))
    assert "toy" in reg.components("encoder")


def test_unknown_name_lists_close_matches(fake_dists):
    make_module("flemme_toy_plugin3", register_encoders=_encoders)
    reg = fake_dists(FakeDist("flemme-toy", "1", {"t": "flemme_toy_plugin3"}))
    with pytest.raises(PluginError, match=r"unknown encoder 'tyo'; did you mean 'toy'"):
        reg.get("encoder", "tyo")


def test_explicit_registration_without_a_distribution(fake_dists):
    reg = fake_dists()
    module = make_module("my_notebook_plugin", register_encoders=_encoders)
    assert "toy" not in reg.components("encoder")
    reg.register_plugin(module)
    assert reg.get("encoder", "toy").provider.name == "my_notebook_plugin"
    reg.unregister_plugin(module)
    assert "toy" not in reg.components("encoder")


def test_component_import_failure_names_the_distribution(fake_dists):
    make_module("flemme_lazy_plugin", register_encoders=lambda register: register(
        "lazy", "flemme_missing_module_q:factory"))
    reg = fake_dists(FakeDist("flemme-lazy", "0.3", {"l": "flemme_lazy_plugin"}))
    with pytest.raises(PluginError, match="flemme-lazy 0.3"):
        reg.get("encoder", "lazy").load()


def test_registration_validates_arguments(fake_dists):
    make_module("flemme_badreg_plugin", register_encoders=lambda register: register("x", 42))
    reg = fake_dists(FakeDist("flemme-badreg", "0.1", {"b": "flemme_badreg_plugin"}))
    assert any("factory must be" in p for p in reg.problems())


@requires_encoders("convnext")  # with flemme-core alone, each plugin's own isolated target checks its entry point
def test_really_installed_distribution_is_discovered():
    """The example plugin (examples/flemme-plugin-template) is pip-installed in the test env."""
    reg = Registry()
    comp = reg.get("encoder", "convnext")
    assert comp.provider.name == "flemme-convnext"
    assert comp.provider.version == "0.1.0"
    assert callable(comp.load())
