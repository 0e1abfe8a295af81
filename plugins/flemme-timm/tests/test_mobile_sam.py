"""The ``sam`` family's ``vit_t``: MobileSAM's published ``mobile_sam.pt`` layout.

MobileSAM is not a package (its repository's ``mobile_sam/modeling/tiny_vit_sam.py`` imports
timm's deprecated paths and re-registers timm's TinyViT names), so the reference here is a
short independent re-statement of its image encoder: the module names (hence the checkpoint's
keys) of ``TinyViT(img_size=1024, embed_dims=[64, 128, 160, 320], ...)`` as ``build_sam_vit_t``
builds it, and its forward written from the paper's operations (window attention on zero-padded
windows with a per-head bias indexed by |dy|·w + |dx|, MBConv, patch merging at the end of a
layer, stride 1 when merging into 320 channels, SAM's neck). The only generalisation: MobileSAM
hard-codes the 64×64 grid of a 1024 input; here the grid is the input's / 16.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm_testutil import build_encoder, max_diff, merge_lora_qv, per_head_rows, randomise_lora
from torch import nn

from flemme_core.build import _encoder_builder
from flemme_core.config import model_config_from_dict
from flemme_core.errors import CheckpointError, ConfigError

DIMS, DEPTHS, HEADS, WINDOWS = (64, 128, 160, 320), (2, 2, 6, 2), (2, 4, 5, 10), (7, 7, 14, 7)


class ConvBN(nn.Sequential):
    """Conv2d_BN: children ``c`` (no bias, 'same' padding) and ``bn``."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class MBConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = ConvBN(dim, 4 * dim), ConvBN(4 * dim, 4 * dim, 3, groups=4 * dim), \
            ConvBN(4 * dim, dim)

    def forward(self, x):
        return F.gelu(x + self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x))))))


class Merge(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        stride = 1 if out in (320, 448, 576) else 2  # MobileSAM's PatchMerging rule
        self.conv1, self.conv2, self.conv3 = ConvBN(dim, out), ConvBN(out, out, 3, stride, out), ConvBN(out, out)

    def forward(self, x):
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.norm, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(heads, window * window))
        pos = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        delta = (pos[:, :, None] - pos[:, None, :]).abs()
        self.register_buffer("index", delta[0] * window + delta[1], persistent=False)

    def forward(self, t):  # (windows, N, C)
        n, length, c = t.shape
        q, k, v = self.qkv(self.norm(t)).view(n, length, self.heads, 3, c // self.heads).unbind(3)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5 + self.attention_biases[:, self.index]
        return self.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(n, length, c))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, t):
        return self.fc2(F.gelu(self.fc1(self.norm(t))))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.attn, self.mlp, self.local_conv = WindowAttention(dim, heads, window), Mlp(dim), \
            ConvBN(dim, dim, 3, groups=dim)

    def forward(self, x):  # (B, C, H, W)
        b, c, h, w = x.shape
        s = self.attn.window
        p = F.pad(x, (0, -w % s, 0, -h % s))  # zero tokens bottom/right, attended to like any other
        ph, pw = p.shape[2:]
        t = p.view(b, c, ph // s, s, pw // s, s).permute(0, 2, 4, 3, 5, 1).reshape(-1, s * s, c)
        y = self.attn(t).view(b, ph // s, pw // s, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, ph, pw)
        x = self.local_conv(x + y[:, :, :h, :w])
        t = x.flatten(2).transpose(1, 2)
        return (t + self.mlp(t)).transpose(1, 2).reshape(b, c, h, w)


class Layer(nn.Module):
    def __init__(self, i: int):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(DIMS[0]) if i == 0 else Block(DIMS[i], HEADS[i], WINDOWS[i])
                                    for _ in range(DEPTHS[i]))
        self.downsample = Merge(DIMS[i], DIMS[i + 1]) if i < 3 else None

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class ChannelNorm(nn.Module):
    """SAM's LayerNorm2d: per position over channels, eps 1e-6."""

    def __init__(self, c: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        x = (x - x.mean(1, keepdim=True)) / (x.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt()
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MobileSamImageEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(ConvBN(3, DIMS[0] // 2, 3, 2), nn.GELU(), ConvBN(DIMS[0] // 2, DIMS[0], 3, 2))
        self.layers = nn.ModuleList(Layer(i) for i in range(4))
        self.norm_head, self.head = nn.LayerNorm(DIMS[-1]), nn.Linear(DIMS[-1], 1000)  # kept, never run
        self.neck = nn.Sequential(nn.Conv2d(DIMS[-1], 256, 1, bias=False), ChannelNorm(256),
                                  nn.Conv2d(256, 256, 3, padding=1, bias=False), ChannelNorm(256))

    def forward(self, x):
        x = self.patch_embed.seq(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


def randomised(enc: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics, norms, biases and attention biases (zero/one at init)."""
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.dim() == 1 or "attention_biases" in name:
                p.normal_(0, 0.2).add_(1.0 if name.endswith("weight") else 0.0)
        for name, b in enc.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return enc.eval()


def published(enc: nn.Module, path) -> None:
    """As mobile_sam.pt: the whole Sam's state dict (plain tensors), encoder under image_encoder."""
    state = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    torch.save(state, path)


def vit_t(options: dict, in_channels: int = 3, size: int = 160) -> torch.nn.Module:
    return build_encoder("sam", {"variant": "vit_t", **options}, in_channels, size)


@pytest.fixture(scope="module")
def mobile_sam(tmp_path_factory):
    torch.manual_seed(3)
    ref = randomised(MobileSamImageEncoder())
    path = tmp_path_factory.mktemp("mobile_sam") / "mobile_sam.pt"
    published(ref, path)
    return ref, path


def test_reference_has_mobile_sams_keys(mobile_sam):
    """The keys the brief and MobileSAM's source name, the count of its TinyViT-5M (302 entries:
    parameters and batch-norm buffers; attention_bias_idxs is not persistent there)."""
    keys = set(torch.load(mobile_sam[1], weights_only=True))
    assert {"image_encoder.patch_embed.seq.0.c.weight", "image_encoder.patch_embed.seq.2.bn.running_var",
            "image_encoder.layers.0.blocks.1.conv3.bn.num_batches_tracked", "image_encoder.layers.0.downsample.conv2.c.weight",
            "image_encoder.layers.2.blocks.5.attn.attention_biases", "image_encoder.layers.3.blocks.1.mlp.fc2.bias",
            "image_encoder.layers.1.blocks.0.local_conv.c.weight", "image_encoder.neck.3.bias",
            "image_encoder.norm_head.weight", "image_encoder.head.weight"} <= keys
    assert sum(k.startswith("image_encoder.") for k in keys) == 302
    assert not any(k.startswith("image_encoder.layers.3.downsample") for k in keys)


def test_published_layout_loads_with_no_key_left_and_equal_embedding(mobile_sam):
    """160 input: grids 40 (convolutions), 20, 10, 10, so every windowed stage pads; [256, 10²] at stride 16."""
    ref, path = mobile_sam
    enc = vit_t({"weights": str(path), "normalize": False})
    assert enc.feature_channels == [256] and enc.feature_strides == [16]
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        out, want = enc(x)[0], ref(x)
    assert out.shape == want.shape == (2, 256, 10, 10)
    assert max_diff(out, want) <= 1e-5 * max(1.0, want.abs().max().item())


def test_one_channel_sums_rgb_filters_with_sams_constants(mobile_sam):
    ref, path = mobile_sam
    grey = vit_t({"weights": str(path)}, in_channels=1, size=64)
    g = torch.rand(1, 1, 64, 64)
    mean = torch.tensor([123.675, 116.28, 103.53]).mean() / 255
    std = torch.tensor([58.395, 57.12, 57.375]).mean() / 255
    with torch.no_grad():
        assert max_diff(grey(g)[0], ref(((g - mean) / std).repeat(1, 3, 1, 1))) <= 1e-4


def test_a_file_missing_keys_is_one_line_naming_them(mobile_sam, tmp_path):
    ref, _ = mobile_sam
    state = {f"image_encoder.{k}": v for k, v in ref.state_dict().items() if not k.startswith("neck.")}
    torch.save(state, tmp_path / "no_neck.pt")
    with pytest.raises(CheckpointError, match=r"weights do not fit: .*6 missing \(neck\.0\.weight") as err:
        vit_t({"weights": str(tmp_path / "no_neck.pt")})
    assert "\n" not in str(err.value)


def test_a_sam_vit_checkpoint_for_vit_t_names_its_keys(tmp_path):
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 8), "image_encoder.blocks.0.attn.qkv.weight":
                torch.zeros(24, 8)}, tmp_path / "sam_vit_b.pth")
    with pytest.raises(CheckpointError, match=r"missing \(neck\.0\.weight.*unexpected \(image_encoder\.blocks") as err:
        vit_t({"weights": str(tmp_path / "sam_vit_b.pth")})
    assert "\n" not in str(err.value)


def test_mobile_sam_file_under_another_variant_or_timm_says_vit_t(mobile_sam):
    _, path = mobile_sam
    with pytest.raises(CheckpointError, match=r"MobileSAM's checkpoint .*variant: vit_t"):
        _encoder_builder(model_config_from_dict({"arch": "unet", "image_size": 64, "encoder": {
            "name": "sam", "weights": str(path)}}))()
    with pytest.raises(CheckpointError, match=r"MobileSAM.*encoder.variant=vit_t"):
        _encoder_builder(model_config_from_dict({"arch": "unet", "image_size": 64, "encoder": {
            "name": "timm", "model": "tiny_vit_5m_224", "weights": str(path)}}))()


def test_vit_overrides_are_refused_for_vit_t():
    with pytest.raises(ConfigError, match=r"embed_dim overrides SAM's ViT; variant vit_t"):
        vit_t({"embed_dim": 32})


def test_qv_lora_equals_the_reference_with_q_and_v_rows_merged_per_head(mobile_sam):
    """LoRA qv on vit_t against the independent MobileSAM encoder whose fused qkv weights get the
    adapters' updates at the rows of each head's q and v (TinyViT's per-head layout, by hand)."""
    ref, path = mobile_sam
    enc = vit_t({"weights": str(path), "normalize": False, "freeze": True, "lora": {"rank": 2}}, size=64).double()
    names = randomise_lora(enc.backbone)  # in float64 throughout: 1e-5 is then far above rounding
    stage = lambda name: int(name.split(".")[1])  # stages.{i}.blocks.{j}.attn.qkv
    assert names == enc.lora_layers == [f"stages.{i}.blocks.{j}.attn.qkv" for i in (1, 2, 3) for j in range(DEPTHS[i])]
    rows = lambda name: per_head_rows(HEADS[stage(name)], DIMS[stage(name)] // HEADS[stage(name)],
                                      DIMS[stage(name)] // HEADS[stage(name)])
    merged, ref = copy.deepcopy(ref).double(), copy.deepcopy(ref).double()
    merge_lora_qv(enc.backbone, merged, rows, rank=2, alpha=4.0, rename=lambda n: n.replace("stages.", "layers.", 1))
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        out, want, plain = enc(x)[0], merged(x), ref(x)
    assert max_diff(out, want) <= 1e-5
    assert max_diff(out, plain) > 1e-2  # the adapters do change the embedding
    for name in names:  # the effective weight: k rows untouched, bit for bit
        layer = enc.backbone.get_submodule(name)
        eye = torch.eye(layer.base.in_features, dtype=torch.float64)
        with torch.no_grad():
            delta = (layer(eye) - layer.base(eye)).T
        _, k, _ = rows(name)
        assert torch.equal(delta[k], torch.zeros_like(delta[k]))
    # frozen TinyViT, trainable adapters: per qkv layer A 2 x (2 x dim), B 2 x dim (q) + 2 x dim (v)
    trainable = {n: p.numel() for n, p in enc.backbone.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in trainable)
    assert sum(trainable.values()) == sum(8 * DIMS[i] * DEPTHS[i] for i in (1, 2, 3)) == 14848
    enc(x)[0].square().mean().backward()
    assert all(p.grad is not None for n, p in enc.backbone.named_parameters() if n in trainable)


def test_random_vit_t_is_mobile_sams_size_and_trains():
    """Random initialisation (no file): MobileSAM's encoder without its unused classifier."""
    enc = vit_t({}, size=64).train()
    n = sum(p.numel() for p in enc.backbone.parameters())
    ref = MobileSamImageEncoder()
    assert n == sum(p.numel() for name, p in ref.named_parameters() if not name.startswith(("head.", "norm_head.")))
    enc(torch.rand(2, 3, 64, 64))[0].square().mean().backward()
    assert all(p.grad is not None for p in enc.backbone.parameters())


@pytest.mark.slow
def test_published_layout_matches_at_mobile_sams_1024(mobile_sam):
    ref, path = mobile_sam
    enc = vit_t({"weights": str(path), "normalize": False}, size=1024)
    x = torch.rand(1, 3, 1024, 1024)
    with torch.no_grad():
        out, want = enc(x)[0], ref(x)
    assert out.shape == (1, 256, 64, 64)
    assert max_diff(out, want) <= 1e-5 * max(1.0, want.abs().max().item())
