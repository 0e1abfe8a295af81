"""The ``timm`` family against timm itself: weights saved as users get them, loaded through flemme."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from safetensors.torch import save_file
from timm_testutil import build_encoder, max_diff, merge_lora_qv, per_head_rows, randomise_lora, thirds_rows

from flemme_core import build_model
from flemme_core.errors import CheckpointError, ConfigError
from flemme_core.lora import LoRAQKV, add_lora, lora_parameters

encoder_of = functools.partial(build_encoder, "timm")


@pytest.fixture(scope="module")
def resnet10t(timm, tmp_path_factory):
    """A random resnet10t and its state dict as a user has it: safetensors and a plain .pth."""
    torch.manual_seed(1)
    ref = timm.create_model("resnet10t", pretrained=False).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval-mode features depend on them
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("resnet10t")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(folder / "resnet10t.safetensors"))
    torch.save(ref.state_dict(), folder / "resnet10t.pth")
    return ref, folder


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_features_equal_timm_reference(resnet10t, fmt):
    ref, folder = resnet10t
    enc = encoder_of({"model": "resnet10t", "weights": str(folder / f"resnet10t.{fmt}"), "normalize": False})
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, intermediates_only=True)
        got = enc(x)
    assert enc.feature_strides == [2, 4, 8, 16, 32] and enc.feature_channels == [f.shape[1] for f in expected]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert max_diff(g, e) <= 1e-5


def test_model_normalisation_and_one_channel_rule(resnet10t, timm):
    """Normalised with the model's own mean/std; 1 channel = the RGB filters summed (smp's rule),
    which on a grey image equals the 3-channel network on that image repeated."""
    ref, folder = resnet10t
    mean = torch.tensor(ref.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ref.pretrained_cfg["std"]).view(1, 3, 1, 1)
    x = torch.rand(1, 3, 64, 64)
    enc = encoder_of({"model": "resnet10t", "weights": str(folder / "resnet10t.safetensors")})
    with torch.no_grad():
        assert max_diff(enc(x)[-1], ref.forward_intermediates((x - mean) / std, intermediates_only=True)[-1]) <= 1e-5
    grey = encoder_of({"model": "resnet10t", "weights": str(folder / "resnet10t.safetensors"), "normalize": False},
                      in_channels=1)
    g = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert max_diff(grey(g)[-1], ref.forward_intermediates(g.repeat(1, 3, 1, 1), intermediates_only=True)[-1]) <= 1e-4


def test_typo_in_model_lists_close_timm_names():
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnt34'; did you mean .*'resnet34'") as err:
        encoder_of({"model": "resnt34"})
    assert "\n" not in str(err.value)


def test_checkpoint_of_another_model_is_one_line_naming_keys(resnet10t):
    _, folder = resnet10t
    with pytest.raises(CheckpointError, match=r"not timm's 'resnet18': \d+ missing \(.*\); \d+ unexpected \(conv1\.0") as err:
        encoder_of({"model": "resnet18", "weights": str(folder / "resnet10t.safetensors")})
    assert "\n" not in str(err.value)


def test_pth_that_needs_full_unpickling_is_refused(resnet10t, tmp_path):
    ref, _ = resnet10t

    import argparse  # a training script's saved arguments: a Python object weights_only refuses

    torch.save({"state_dict": ref.state_dict(), "args": argparse.Namespace(depth=10)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="needs full unpickling .*argparse.Namespace") as err:
        encoder_of({"model": "resnet10t", "weights": str(tmp_path / "pickled.pth")})
    assert "\n" not in str(err.value)


def test_nested_lightning_style_pth_loads(resnet10t, tmp_path):
    ref, _ = resnet10t
    torch.save({"epoch": 3, "state_dict": ref.state_dict()}, tmp_path / "nested.pth")
    enc = encoder_of({"model": "resnet10t", "weights": str(tmp_path / "nested.pth"), "normalize": False})
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(enc(x)[0], ref.forward_intermediates(x, intermediates_only=True)[0]) <= 1e-5


def test_freeze_keeps_statistics_and_trains_only_the_decoder(resnet10t):
    _, folder = resnet10t
    model = build_model({"arch": "unet", "image_size": 32, "in_channels": 1,
                         "encoder": {"name": "timm", "model": "resnet10t", "freeze": True,
                                     "weights": str(folder / "resnet10t.safetensors")}})
    model.train()
    assert not model.encoder.backbone.training
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model(torch.rand(2, 1, 32, 32)).square().mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.decoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())


def test_3d_and_context_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="2D only") as err:
        build_model({"arch": "unet", "dims": 3, "image_size": 32, "encoder": {"name": "timm", "model": "resnet10t"}})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot inject one into its blocks") as err:
        build_model({"arch": "ddpm", "image_size": 32, "out_channels": 1,
                     "encoder": {"name": "timm", "model": "resnet10t"}})
    assert "\n" not in str(err.value)


def test_channels_are_fixed_by_the_network():
    with pytest.raises(ConfigError, match="channels is fixed by the pretrained network"):
        encoder_of({"model": "resnet10t", "channels": [8, 16]})


def test_vit_weights_at_another_image_size_resize_the_position_table(timm, tmp_path):
    """A ViT file is the model at 224; built at 64, timm's own filter resamples its position table
    while loading, as timm does for its pretrained weights."""
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    enc = encoder_of({"model": "vit_tiny_patch16_224", "model_args": {"depth": 2}, "out_indices": [1],
                      "weights": str(tmp_path / "vit.safetensors"), "normalize": False}, size=64)
    assert enc.feature_strides == [16] and enc.feature_channels == [192]
    small = timm.create_model("vit_tiny_patch16_224", pretrained=True, depth=2, img_size=64,
                              pretrained_cfg_overlay={"file": str(tmp_path / "vit.safetensors")}).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = small.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        assert max_diff(enc(x)[0], expected) <= 1e-5


# timm attentions with a fused qkv Linear, their arguments, input and (q, k, v) rows written by hand
ATTENTIONS = {
    "tiny_vit": ("tiny_vit.Attention", {"dim": 16, "key_dim": 4, "num_heads": 2, "attn_ratio": 1,
                                        "resolution": (2, 2)}, per_head_rows(2, 4, 4)),
    "efficientformer": ("efficientformer.Attention", {"dim": 16, "key_dim": 4, "num_heads": 2, "attn_ratio": 4,
                                                      "resolution": 2}, per_head_rows(2, 4, 16)),
    "maxvit": ("maxxvit.AttentionCl", {"dim": 16, "dim_head": 4, "head_first": True}, per_head_rows(4, 4, 4)),
    "maxvit_not_head_first": ("maxxvit.AttentionCl", {"dim": 16, "dim_head": 4, "head_first": False},
                              thirds_rows(16)),
    "vit": ("vision_transformer.Attention", {"dim": 16, "num_heads": 2}, thirds_rows(16)),
}


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_lora_qv_follows_each_timm_attentions_qkv_layout(timm, kind):
    """Each timm attention with the adapters equals itself with B·A merged at the q and v rows its
    own reshape uses (per head for TinyViT, EfficientFormer, MaxViT; thirds for ViT)."""
    path, kwargs, rows = ATTENTIONS[kind]
    module, cls = path.split(".")
    attn = getattr(getattr(timm.models, module), cls)(**kwargs)
    attn.eval()  # (TinyViT's and EfficientFormer's train() return None)
    plain, merged = copy.deepcopy(attn).double(), copy.deepcopy(attn).double()
    add_lora(attn, rank=2, alpha=4.0, targets=["qv"])
    attn.double()
    randomise_lora(attn, std=1.0)
    merge_lora_qv(attn, merged, lambda name: rows, rank=2, alpha=4.0)
    x = torch.randn(2, 4, 16, dtype=torch.float64)  # 4 tokens: the 2x2 resolution of the bias tables
    with torch.no_grad():
        out, want = attn(x), merged(x)
        assert max_diff(out, want) <= 1e-5 and max_diff(out, plain(x)) > 1e-2


def test_tiny_vit_lora_qv_equals_timm_with_q_and_v_rows_merged_per_head(timm, tmp_path):
    """ImageNet TinyViT (``tiny_vit_5m_224``, the MMFD student's timm model) has MobileSAM's per-head
    qkv: flemme's frozen model with adapters equals timm's with B·A merged at each head's q and v rows."""
    ref = timm.create_model("tiny_vit_5m_224", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "tiny_vit.safetensors"))
    enc = encoder_of({"model": "tiny_vit_5m_224", "weights": str(tmp_path / "tiny_vit.safetensors"),
                      "normalize": False, "freeze": True, "lora": {"rank": 2}}).double()
    dims, depths, heads = (64, 128, 160, 320), (2, 2, 6, 2), (2, 4, 5, 10)  # tiny_vit_5m_224: head_dim 32
    names = randomise_lora(enc.backbone)
    assert names == enc.lora_layers == [f"stages_{i}.blocks.{j}.attn.qkv" for i in (1, 2, 3) for j in range(depths[i])]
    stage = lambda name: int(name.split(".")[0].removeprefix("stages_"))
    merged = copy.deepcopy(ref).double()
    merge_lora_qv(enc.backbone, merged, lambda name: per_head_rows(heads[stage(name)], 32, 32), rank=2, alpha=4.0,
                  rename=lambda name: name.replace("stages_", "stages.", 1))
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        got = enc(x)
        want = merged.forward_intermediates(x, intermediates_only=True)
        plain = ref.double().forward_intermediates(x, intermediates_only=True)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert max_diff(g, w) <= 1e-5
    assert max_diff(got[-1], plain[-1]) > 1e-2
    # frozen TinyViT, trainable adapters: per qkv layer A 2 x (2 x dim), B 2 x dim (q) + 2 x dim (v)
    trainable = {n: p.numel() for n, p in enc.backbone.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in trainable)
    assert sum(trainable.values()) == sum(8 * dims[i] * depths[i] for i in (1, 2, 3)) == 14848


def gcvit_rows(name: str, dim: int) -> tuple[list[int], list[int], list[int]]:
    """GCViT alternates window attention (odd blocks: ``use_global``, ``i % 2 != 0`` in timm) whose
    qkv is only k then v, ``(2, heads, head_dim)``, with plain window attention in thirds."""
    block = int(name.split(".")[3])  # stages.S.blocks.B.attn.qkv
    return ([], list(range(dim)), list(range(dim, 2 * dim))) if block % 2 else thirds_rows(dim)


# tiny random timm models (name, create_model arguments, image size, (q, k, v) rows of a qkv of width dim)
TIMM_MODELS = {
    # EVA and BEiT (and Swin V2) add q_bias/v_bias by F.linear(x, self.qkv.weight, bias): the qkv is never called
    "eva": ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2, "embed_dim": 32, "num_heads": 2}, 28,
            lambda name, dim: thirds_rows(dim)),
    "eva_unfused": ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2, "embed_dim": 32, "num_heads": 2,
                                               "qkv_fused": False}, 28, None),  # q_proj, k_proj, v_proj
    "beit": ("beit_base_patch16_224", {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}, 32,
             lambda name, dim: thirds_rows(dim)),
    "swinv2": ("swinv2_tiny_window8_256", {"img_size": 64, "embed_dim": 16, "depths": (1, 1, 1, 1),
                                           "num_heads": (2, 2, 4, 4)}, 64, lambda name, dim: thirds_rows(dim)),
    "gcvit": ("gcvit_xxtiny", {"img_size": 64, "embed_dim": 16}, 64, gcvit_rows),
}


@pytest.mark.parametrize("kind", TIMM_MODELS)
def test_lora_qv_on_timm_models_equals_q_and_v_rows_merged(timm, kind):
    """Whole timm models with LoRA qv: B = 0 changes nothing; with B != 0 the model equals a plain
    copy with (alpha/rank)·B·A merged by hand at each attention's q and v rows (GCViT's global
    attention: v only), its k rows untouched, and gradients reach every adapter. For EVA, BEiT and
    Swin V2, whose attention reads ``qkv.weight`` instead of calling ``qkv``, it also shows that
    LoRA acts at all."""
    name, kwargs, size, rows = TIMM_MODELS[kind]
    model = timm.create_model(name, pretrained=False, **kwargs).eval().double()
    with torch.no_grad():  # timm zero-initialises q_bias/v_bias and Swin V2's post-norm scales: make them matter
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.5)
    plain, merged = copy.deepcopy(model), copy.deepcopy(model)
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    names = add_lora(model, rank=2, alpha=4.0, targets=["qv"])
    model.double()
    attentions = [n.rpartition(".")[0] for n, m in plain.named_modules() if n.endswith((".qkv", ".q_proj"))]
    suffixes = ["q_proj", "v_proj"] if rows is None else ["qkv"]
    assert names == [f"{a}.{s}" for a in attentions for s in suffixes] and len(attentions) >= 2
    with torch.no_grad():
        before = plain.forward_features(x)
        assert torch.equal(model.forward_features(x), before)  # B = 0 at start
    assert randomise_lora(model, std=1.0) == names
    merge_lora_qv(model, merged, (lambda n: rows(n, merged.get_submodule(n).in_features)) if rows else None,
                  rank=2, alpha=4.0)
    out = model.forward_features(x)
    with torch.no_grad():
        want = merged.forward_features(x)
    assert max_diff(out, want) <= 1e-5 and max_diff(out, before) > 1e-2
    for n, m in model.named_modules():
        if isinstance(m, LoRAQKV):  # the keys' rows of the weight the attention reads, bit for bit
            k = rows(n, m.base.in_features)[1]
            assert torch.equal(m.weight[k].detach(), plain.get_submodule(n).weight[k])
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(model))


def test_lora_option_of_the_timm_encoder_acts_on_eva(timm):
    """The family's ``lora`` option on a frozen EVA (whose attention reads ``qkv.weight``): the
    adapters are the only trainable parameters, get gradients, and move the features once B != 0."""
    enc = encoder_of({"model": "eva02_tiny_patch14_224", "model_args": {"depth": 2, "embed_dim": 32, "num_heads": 2},
                      "out_indices": [1], "normalize": False, "freeze": True, "lora": {"rank": 2}}, size=28)
    assert enc.lora_layers == ["model.blocks.0.attn.qkv", "model.blocks.1.attn.qkv"]
    x = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        before = enc(x)[0]
    randomise_lora(enc.backbone, std=1.0)
    after = enc(x)[0]
    assert max_diff(after, before) > 1e-2
    after.square().mean().backward()
    trainable = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable)
