"""The ``swin`` family: shifted-window mask and relative position index against independent
brute-force constructions, padding, context, errors, checkpoints (shapes: test_vit.py, both families)."""

from __future__ import annotations

import itertools

import pytest
import torch
from vit_testutil import small_model

from flemme_core.config import EncoderConfig
from flemme_core.errors import ConfigError, ShapeError


def test_windows_fit_sizes_not_divisible_by_the_window():
    model = small_model("swin", "unet", 2, 48, window_size=5)  # levels 24, 12, 6: all padded
    assert model(torch.randn(1, 1, 48, 48)).shape == (1, 3, 48, 48)


def test_stages_alternate_regular_and_shifted_windows():
    model = small_model("swin", "unet", 2, 64, num_blocks=4)  # auto window 8
    shifts = [b.shift for b in model.encoder.stages[0].blocks]
    assert shifts == [(0, 0), (4, 4), (0, 0), (4, 4)]
    assert model.encoder.blocks.level_windows == [[8, 8], [8, 8], [8, 8]]
    assert small_model("swin", "unet", 3, 32).encoder.blocks.level_windows == [[4] * 3, [4] * 3, [4] * 3]
    assert small_model("swin", "unet", 2, 32).encoder.blocks.level_windows == [[8, 8], [8, 8], [4, 4]]


def brute_force_index(window):
    """Index into the (2w-1)^d table of the offset between every pair of window positions."""
    coords = list(itertools.product(*[range(w) for w in window]))
    index = torch.zeros(len(coords), len(coords), dtype=torch.long)
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            flat = 0
            for axis, w in enumerate(window):
                flat = flat * (2 * w - 1) + (a[axis] - b[axis] + w - 1)
            index[i, j] = flat
    return index


@pytest.mark.parametrize("window", [(3, 4), (2, 3, 4)])
def test_relative_position_index_matches_brute_force(window):
    from flemme_vit.swin import WindowAttention

    attn = WindowAttention(8, 2, window)
    assert torch.equal(attn.relative_position_index, brute_force_index(window))
    assert attn.relative_position_bias_table.shape[0] == int(torch.tensor([2 * w - 1 for w in window]).prod())


def naive_window_attention(block, h):
    """Full attention over all tokens of the map, allowed only inside the same (shifted) window.

    Independent of the roll/pad/partition path: a token at p lies in window
    floor((p - s) / w) along each axis (windows start at the shift s and never wrap).
    """
    b, *size, c = h.shape
    attn, window = block.attn, block.window
    shift = block.shift_for(size)
    coords = torch.tensor(list(itertools.product(*[range(s) for s in size])))  # (L, d), row-major
    ids = torch.stack([torch.div(coords[:, a] - shift[a], window[a], rounding_mode="floor")
                       for a in range(len(size))], 1)
    allowed = (ids[:, None, :] == ids[None, :, :]).all(-1)
    table = attn.relative_position_bias_table
    heads = table.shape[1]
    idx = torch.zeros(len(coords), len(coords), dtype=torch.long)
    for axis, w in enumerate(window):
        idx = idx * (2 * w - 1) + (coords[:, None, axis] - coords[None, :, axis] + w - 1).clamp(0, 2 * w - 2)
    bias = table[idx].permute(2, 0, 1)  # (heads, L, L); clamped entries are never allowed
    t = h.reshape(b, -1, c)
    q, k, v = attn.qkv(t).reshape(b, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-1, -2)) * attn.scale + bias
    weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
    out = (weights @ v).transpose(1, 2).reshape(b, -1, c)
    return attn.proj(out).reshape(h.shape)


@pytest.mark.parametrize("size,window,shifted", [
    ((8, 8), (4, 4), True),
    ((10, 7), (4, 4), True),      # padded on both axes
    ((10, 3), (4, 4), True),      # one axis smaller than the window: padded, not shifted
    ((9, 6), (3, 4), False),      # regular windows with padding
    ((5, 6, 4), (2, 3, 2), True),
    ((4, 4, 4), (2, 2, 2), True),
])
def test_shifted_window_attention_matches_naive_masked_attention(size, window, shifted):
    from flemme_vit.swin import SwinBlock

    block = SwinBlock(len(size), 12, 3, window, shifted, mlp_ratio=2.0, qkv_bias=True, dropout=0.0,
                      attn_dropout=0.0, drop_path=0.0, norm="layer", act="gelu", context_dim=None).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()  # make the bias matter
        h = torch.randn(2, *size, 12)
        torch.testing.assert_close(block.attend(h), naive_window_attention(block, h), atol=2e-5, rtol=1e-4)


def test_no_token_attends_across_the_wrapped_border():
    """Changing the far corner (rolled into the same window as the origin) leaves the origin alone."""
    from flemme_vit.swin import SwinBlock

    block = SwinBlock(2, 8, 2, (4, 4), True, mlp_ratio=2.0, qkv_bias=True, dropout=0.0, attn_dropout=0.0,
                      drop_path=0.0, norm="layer", act="gelu", context_dim=None).eval()
    h = torch.randn(1, 8, 8, 8)
    g = h.clone()
    g[0, 7, 7] += 10.0
    with torch.no_grad():
        a, b = block.attend(h), block.attend(g)
    assert torch.equal(a[0, 0, 0], b[0, 0, 0])      # (0,0) and (7,7) share a rolled window, not a region
    assert not torch.equal(a[0, 6, 6], b[0, 6, 6])  # true neighbours of (7,7) do see it


def test_context_is_injected_in_every_block():
    from flemme_vit.swin import encoder

    enc = encoder(EncoderConfig(name="swin", channels=[8, 16], num_blocks=2, patch_size=2, dims=3,
                                image_size=[8, 8, 8], context_dim=4, options={"head_dim": 4})).eval()
    assert all(b.context is not None for s in enc.stages for b in s.blocks)
    x = torch.randn(2, 1, 8, 8, 8)
    assert not torch.allclose(enc(x, torch.zeros(2, 4))[-1], enc(x, torch.ones(2, 4))[-1])


def test_window_larger_than_feature_map_is_one_line():
    with pytest.raises(ShapeError) as err:
        small_model("swin", "unet", 3, 32, window_size=7)  # levels 16, 8, 4
    assert str(err.value) == (
        "swin window 7×7×7 is larger than the 4×4×4 feature map at level 2: a window must fit every level; "
        "set encoder.window_size to at most 4 (or 0 for auto), use an image size of at least 56, "
        "or use fewer levels")


def test_heads_not_dividing_width_is_one_line():
    with pytest.raises(ConfigError) as err:
        small_model("swin", heads=[2, 4, 5])
    assert str(err.value) == ("model.encoder.heads: 5 heads do not divide width 32 at level 2; "
                              "use a divisor of 32 (e.g. 4 or 8)")


def test_bad_window_option_is_one_line():
    with pytest.raises(ConfigError, match="window_size has 2 values for a 3D model"):
        small_model("swin", "unet", 3, 16, window_size=[2, 2])


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    from flemme_core.checkpoint import load_model, save_model

    model = small_model("swin", "unet", 3, 16).eval()
    loaded = load_model(save_model(model, tmp_path / "swin.safetensors")).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_trains_under_bf16_autocast(family):
    model = small_model(family, "unet", 2, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 32, 32))
    out.float().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
