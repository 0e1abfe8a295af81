"""The example plugin's own tests: found through its entry point, builds with every core architecture."""

import pytest
import torch

from flemme_core import build_model, get_registry, load_model, save_model
from flemme_core.testing import conformance_tests


def test_registered_through_entry_point():
    component = get_registry().get("encoder", "convnext")
    assert component.provider.name == "flemme-convnext"
    assert component.provider.entry_point == "convnext"


@pytest.mark.parametrize("arch", ["unet", "ae"])
@pytest.mark.parametrize("dims", [2, 3])
def test_builds_and_trains(arch, dims, tmp_path):
    model = build_model({"arch": arch, "encoder": {"name": "convnext", "channels": [8, 16]},
                         "dims": dims, "image_size": 16, "out_channels": 2})
    x = torch.randn(2, 1, *[16] * dims)
    out = model(x)
    assert out.shape == (2, 2, *[16] * dims)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    save_model(model, tmp_path / "m.safetensors")
    model.eval()
    again = load_model(tmp_path / "m.safetensors").eval()
    assert torch.equal(model(x), again(x))



# flemme's conformance kit: contract, context, common keys, save/load, unet and ae in 2D/3D
# (every installed architecture in the slow run)
test_conformance, test_conformance_every_architecture = conformance_tests("convnext")
