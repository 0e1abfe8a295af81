"""``mixer: identity`` for vit and swin: attention goes (x + norm1(x)), norms, MLP,
drop-path and context injection stay."""

from __future__ import annotations

import pytest
import torch

from flemme_core import build_model
from flemme_core.ablation import check_identity_mixer


@pytest.mark.parametrize("family", ["vit", "swin"])
@pytest.mark.parametrize("dims,size", [(2, 16), (3, 8)])
def test_identity_removes_only_attention(family, dims, size):
    result = check_identity_mixer(family, dims=dims, size=size, patch_size=2)
    assert all(".attn." in n for n in result["removed"])
    kept = {n.split("blocks.0.", 1)[-1] for n in result["kept"] if ".blocks.0." in n}
    assert {"norm1.weight", "norm2.weight", "mlp.linear1.weight", "mlp.linear2.weight"} <= kept


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_identity_block_is_residual_norm_then_mlp(family):
    model = build_model({"arch": "unet", "dims": 2, "image_size": 16, "in_channels": 1, "out_channels": 2,
                         "encoder": {"name": family, "channels": [16, 32], "num_blocks": 1, "patch_size": 2,
                                     "mixer": "identity"}}).eval()
    block = model.encoder.stages[0].blocks[0]
    t = torch.randn(1, 8, 8, 16)
    h = t + block.norm1(t)
    with torch.no_grad():
        torch.testing.assert_close(block(t), h + block.mlp(block.norm2(h)))
