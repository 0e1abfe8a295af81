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


def small_model(encoder: str, arch: str = "unet", dims: int = 2, image: int = 32, **enc):
    from flemme_core.build import build_model

    spec = {"name": encoder, "channels": [8, 16, 32], "num_blocks": 2, "patch_size": 2, "head_dim": 4, **enc}
    return build_model({"arch": arch, "image_size": [image] * dims, "in_channels": 1, "out_channels": 3,
                        "encoder": spec})
