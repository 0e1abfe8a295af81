"""Every flemme-timm family under ``unet`` and ``hunet`` (flemme-pyramid), 1 and 3 channels, forward
and backward, and the round trip through a flemme checkpoint (rebuilt without the weight files)."""

from __future__ import annotations

import pytest
import torch

from flemme_core import build_model
from flemme_core.testing import check_reloads_without

TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8}
FAMILIES = {
    "timm-resnet10t": {"name": "timm", "model": "resnet10t"},
    "tinyvit": {"name": "timm", "model": "tiny_vit_5m_224"},  # ImageNet TinyViT's pyramid, through timm
    "mobile_sam": {"name": "sam", "variant": "vit_t", "pyramid": [8, 16, 32]},  # MobileSAM's encoder + neck
    "sam": {"name": "sam", "embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1],
            "window_size": 2, "neck_channels": 16, "native_size": 64, "pyramid": [8, 16, 32]},
    "clip": {"name": "clip", "config": TINY_VISION, "pyramid": [4, 8, 16]},
}


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("arch", ["unet", "hunet"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_under_architecture(family, arch, in_channels):
    pytest.importorskip("flemme_pyramid") if arch == "hunet" else None
    model = build_model({"arch": arch, "image_size": 64, "in_channels": in_channels, "out_channels": 2,
                         "encoder": dict(FAMILIES[family])})
    x = torch.rand(2, in_channels, 64, 64)
    out = model(x)
    outs = out if isinstance(out, (list, tuple)) else [out]  # hunet: the full-resolution prediction first
    assert outs[0].shape == (2, 2, 64, 64) and all(torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]


def test_single_scale_sam_is_one_level_at_stride_16():
    """As MMFD's branch: the neck map alone, [neck, H/16]."""
    model = build_model({"arch": "unet", "image_size": 64, "in_channels": 1,
                         "encoder": {k: v for k, v in FAMILIES["sam"].items() if k != "pyramid"}})
    assert model.encoder.feature_channels == [16] and model.encoder.feature_strides == [16]
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_checkpoint_round_trip_needs_no_weight_files(tmp_path):
    from flemme_timm.timm_import import import_timm
    from safetensors.torch import save_file

    ref = import_timm().create_model("resnet10t", pretrained=False)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "r.safetensors"))
    model = build_model({"arch": "unet", "image_size": 32, "in_channels": 1,
                         "encoder": {"name": "timm", "model": "resnet10t", "weights": str(tmp_path / "r.safetensors")}})
    check_reloads_without(model, [tmp_path / "r.safetensors"], torch.rand(1, 1, 32, 32), tmp_path)


@pytest.mark.parametrize("family", ["timm", "sam", "clip"])
def test_conformance_kit(family):
    """flemme_core.testing's whole kit: every installed architecture (2D: the families declare dims=[2],
    3D is refused in one line), the contract, context refused (supports_context False), common keys
    (norm/act/dropout reach the cnn decoder), save/load."""
    from flemme_core.testing import check_family

    check_family(family)
