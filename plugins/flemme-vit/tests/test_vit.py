"""The ``vit`` family: shapes with every core architecture (swin's too), attention numerics, context, errors."""

from __future__ import annotations

import pytest
import torch
from vit_testutil import small_model

from flemme_core.config import EncoderConfig
from flemme_core.errors import ConfigError, ShapeError


def test_registered_with_version():
    from flemme_core.registry import get_registry

    registry = get_registry()
    for name in ("vit", "swin"):
        provider = registry.provider_of("encoder", name)
        assert provider is not None and provider.name == "flemme-vit", provider


@pytest.mark.parametrize("family", ["vit", "swin"])
@pytest.mark.parametrize("arch", ["unet", "ae"])
@pytest.mark.parametrize("dims,image", [(2, 32), (3, 16)])
def test_shapes(family, arch, dims, image):
    model = small_model(family, arch, dims, image)
    x = torch.randn(2, 1, *[image] * dims)
    out = model(x)
    assert out.shape == (2, 3, *[image] * dims)
    feats = model.encoder(x)
    assert [f.shape[1] for f in feats] == [8, 16, 32]
    assert [f.shape[2] for f in feats] == [image // 2, image // 4, image // 8]
    out.mean().backward()  # every parameter takes part
    assert all(p.grad is not None for p in model.parameters())


def test_global_attention_matches_naive_softmax():
    from flemme_vit.vit import GlobalAttention

    attn = GlobalAttention(12, 3, qkv_bias=True, attn_dropout=0.0, proj_dropout=0.0).eval()
    x = torch.randn(2, 10, 12)
    q, k, v = attn.qkv(x).split(12, dim=-1)
    heads = [slice(4 * i, 4 * i + 4) for i in range(3)]
    out = torch.cat([torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2.0, -1) @ v[..., s] for s in heads], -1)
    torch.testing.assert_close(attn(x), attn.out_proj(out), atol=1e-5, rtol=1e-5)


def test_position_embedding_interpolates_to_other_sizes():
    model = small_model("vit", "unet", 2, 32).eval()
    assert tuple(model.encoder.stem.pos.shape) == (1, 8, 16, 16)
    assert model(torch.randn(1, 1, 48, 40)).shape == (1, 3, 48, 40)


def test_drop_path_rises_over_depth():
    model = small_model("vit", "unet", 2, 32, drop_path=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.encoder.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates) and len(set(rates)) == len(rates)


def test_context_is_injected_in_every_block():
    from flemme_vit.vit import encoder

    enc = encoder(EncoderConfig(name="vit", channels=[8, 16], num_blocks=2, patch_size=2, dims=2,
                                image_size=[16, 16], context_dim=5, options={"head_dim": 4})).eval()
    blocks = [b for s in enc.stages for b in s.blocks]
    assert all(b.context is not None and b.context.channel_axis == -1 for b in blocks)
    x = torch.randn(2, 1, 16, 16)
    a, b = enc(x, torch.zeros(2, 5))[-1], enc(x, torch.ones(2, 5))[-1]
    assert not torch.allclose(a, b)
    with pytest.raises(ShapeError, match="context"):
        enc(x)


def test_heads_not_dividing_width_is_one_line():
    with pytest.raises(ConfigError) as err:
        small_model("vit", heads=[3, 4, 4])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == "model.encoder.heads: 3 heads do not divide width 8 at level 0; use a divisor of 8 (e.g. 2 or 4)"
    with pytest.raises(ConfigError, match="not a multiple of head_dim 16"):
        small_model("vit", channels=[24, 48], head_dim=16)


def test_token_family_rejects_batch_norm():
    with pytest.raises(ConfigError, match="norm"):
        small_model("vit", norm="batch")


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    from flemme_core.checkpoint import load_model, save_model

    model = small_model("vit", "unet", 2, 32).eval()
    path = save_model(model, tmp_path / "vit.safetensors")
    loaded = load_model(path).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.checkpoint_metadata["versions"]["flemme-vit"] == "0.1.0"
