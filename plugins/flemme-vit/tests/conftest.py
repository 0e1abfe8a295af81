"""Shared helpers: small models so the whole suite runs in well under a minute on 2 cores."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _registered():
    """Use the installed entry point; register the module directly if the plugin is not installed."""
    from flemme_core.registry import get_registry

    registry = get_registry()
    if "vit" not in registry.components("encoder"):
        import flemme_vit.plugin

        registry.register_plugin(flemme_vit.plugin, "flemme-vit")
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: threads only add synchronisation (and stall badly on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
