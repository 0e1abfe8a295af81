"""The ``sam`` family against segment-anything's own image encoder, from the ORIGINAL checkpoint
format (``image_encoder.*`` beside the prompt encoder and mask decoder)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from timm_testutil import (
    build_encoder,
    max_diff,
    merge_lora_qv,
    randomise_lora,
    segment_anything_modeling,
    thirds_rows,
)

from flemme_core.errors import CheckpointError

TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "global_attn_indexes": [1, 3], "window_size": 3,
        "neck_channels": 16}


sam_encoder = functools.partial(build_encoder, "sam")


def reference_encoder(native: int, embed_dim: int, depth: int, num_heads: int, global_attn_indexes, window_size: int,
                      neck_channels: int):
    """segment-anything's ImageEncoderViT exactly as build_sam builds it, random weights (non-zero
    position and relative-position tables, which SAM initialises to zero)."""
    modeling, _ = segment_anything_modeling()
    enc = modeling.ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=native, mlp_ratio=4,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn_indexes, window_size=window_size,
        out_chans=neck_channels)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "pos" in name or "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.2).add_(1.0 if name.endswith("weight") else 0.0)
    return enc.eval()


def original_checkpoint(enc: torch.nn.Module, path) -> None:
    """Saved as SAM/MedSAM publish it: the whole Sam's state dict, a plain .pth."""
    state = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    torch.save(state, path)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    torch.manual_seed(2)
    ref = reference_encoder(native=128, **TINY)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    original_checkpoint(ref, path)
    return ref, path


def test_features_equal_segment_anything_at_native_size(tiny_sam):
    ref, path = tiny_sam
    enc = sam_encoder({**TINY, "weights": str(path), "normalize": False}, size=128)
    assert enc.native_size == 128 and enc.feature_channels == [16] and enc.feature_strides == [16]
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert max_diff(enc(x)[0], ref(x)) <= 1e-5


def test_other_size_resizes_position_tables(tiny_sam):
    """At 64 (the checkpoint is 128): the same as segment-anything built at 64 with the absolute
    table resampled (bicubic, as timm) and the relative tables interpolated by SAM's own code."""
    from timm.layers import resample_abs_pos_embed_nhwc

    ref, path = tiny_sam
    small = reference_encoder(native=64, **TINY)
    state = ref.state_dict()
    state["pos_embed"] = resample_abs_pos_embed_nhwc(state["pos_embed"], (4, 4))
    with torch.no_grad():  # the global blocks keep the 128-grid relative tables: SAM interpolates them itself
        for key, value in state.items():
            small.get_parameter(key).data = value.clone()
    enc = sam_encoder({**TINY, "weights": str(path), "normalize": False}, size=64)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)[0]
        assert out.shape == (1, 16, 4, 4)
        assert max_diff(out, small(x)) <= 1e-5


def test_one_channel_sums_rgb_filters_and_sam_normalisation(tiny_sam):
    ref, path = tiny_sam
    grey = sam_encoder({**TINY, "weights": str(path)}, in_channels=1, size=128)
    g = torch.rand(1, 1, 128, 128)
    mean = torch.tensor([123.675, 116.28, 103.53]).mean() / 255
    std = torch.tensor([58.395, 57.12, 57.375]).mean() / 255
    with torch.no_grad():
        assert max_diff(grey(g)[0], ref(((g - mean) / std).repeat(1, 3, 1, 1))) <= 1e-5


def test_wrong_variant_is_one_line_naming_keys(tiny_sam):
    _, path = tiny_sam
    with pytest.raises(CheckpointError, match=r"weights do not fit: .*missing \(blocks\.4\.") as err:
        sam_encoder({**TINY, "depth": 6, "weights": str(path)}, size=128)
    assert "\n" not in str(err.value)


def test_lora_qv_on_frozen_sam_trains_only_adapters(tiny_sam):
    _, path = tiny_sam
    enc = sam_encoder({**TINY, "weights": str(path), "freeze": True, "lora": {"rank": 4}}, size=64)
    assert len(enc.lora_layers) == TINY["depth"] and all(n.endswith("attn.qkv") for n in enc.lora_layers)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    x = torch.rand(1, 3, 64, 64)
    enc(x)[0].sum().backward()
    assert all(p.grad is not None for n, p in enc.named_parameters() if p.requires_grad)


def test_lora_qv_keeps_thirds_and_equals_segment_anything_with_q_and_v_thirds_merged(tiny_sam):
    """SAM's fused qkv is (3, heads, d): the adapters keep their names and shapes (checkpoints of
    MedSAM with LoRA load as before) and equal SAM's own encoder with B·A merged into the q and v
    thirds of each qkv weight."""
    ref, path = tiny_sam
    enc = sam_encoder({**TINY, "weights": str(path), "normalize": False, "freeze": True, "lora": {"rank": 2}},
                      size=128).double()
    d = TINY["embed_dim"]
    shapes = {n: tuple(p.shape) for n, p in enc.backbone.blocks[0].attn.qkv.named_parameters()}
    assert shapes == {"base.weight": (3 * d, d), "base.bias": (3 * d,), "lora_a.0.weight": (2, d),
                      "lora_a.1.weight": (2, d), "lora_b.0.weight": (d, 2), "lora_b.1.weight": (d, 2)}
    assert randomise_lora(enc.backbone) == enc.lora_layers == [f"blocks.{i}.attn.qkv" for i in range(TINY["depth"])]
    merged = copy.deepcopy(ref).double()
    merge_lora_qv(enc.backbone, merged, lambda name: thirds_rows(d), rank=2, alpha=4.0)
    x = torch.rand(2, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        out, want, plain = enc(x)[0], merged(x), ref.double()(x)
    assert max_diff(out, want) <= 1e-5 and max_diff(out, plain) > 1e-2


@pytest.mark.slow
def test_published_vit_b_layout_loads_and_matches_at_1024(tmp_path):
    """sam_model_registry['vit_b'](checkpoint=None): the real SAM/MedSAM ViT-B key layout (random
    weights) loads with zero missing/unexpected keys and gives segment-anything's embedding."""
    _, build_sam = segment_anything_modeling()
    sam = build_sam.sam_model_registry["vit_b"](checkpoint=None).eval()
    torch.save(sam.state_dict(), tmp_path / "sam_vit_b.pth")
    enc = sam_encoder({"weights": str(tmp_path / "sam_vit_b.pth"), "normalize": False}, size=1024)
    x = torch.rand(1, 3, 1024, 1024)
    with torch.no_grad():
        assert max_diff(enc(x)[0], sam.image_encoder(x)) <= 1e-4 * sam.image_encoder(x).abs().max().item()
    small = sam_encoder({"weights": str(tmp_path / "sam_vit_b.pth")}, size=512)
    assert small.native_size == 1024 and small(torch.rand(1, 3, 512, 512))[0].shape == (1, 256, 32, 32)
