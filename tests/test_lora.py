"""flemme_core.lora's ``qv`` target on fused qkv layers, against references written by hand: the
q, k and v output rows of a small layer listed literally (thirds, and per head as TinyViT and
EfficientFormer reshape them, k and v only as GCViT's global attention), the adapter's effective
weight probed from its outputs (and the merged ``weight`` that EVA/BEiT-style parents read instead
of calling the layer), and the thirds adapter against its forward before layouts existed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flemme_core.errors import ConfigError
from flemme_core.lora import LoRALinear, LoRAQKV, QKVLayout, add_lora, freeze_with_lora, lora_parameters

RANK, ALPHA = 2, 4.0


class Holder(nn.Module):
    """A fused ``qkv`` linear under an attention-like parent carrying the given attributes."""

    def __init__(self, out_features: int, **attrs: int):
        super().__init__()
        self.qkv = nn.Linear(8, out_features)
        for key, value in attrs.items():
            setattr(self, key, value)


def randomised(layer: LoRAQKV) -> LoRAQKV:
    """Non-zero B (A is already random): the adapter changes its outputs."""
    torch.manual_seed(1)
    for b in layer.lora_b:
        nn.init.normal_(b.weight)
    return layer


def effective_delta(layer: LoRAQKV) -> torch.Tensor:
    """(out, in): what the adapter adds to the frozen weight, read off its outputs on the basis."""
    eye = torch.eye(layer.base.in_features)
    with torch.no_grad():
        return (layer(eye) - layer.base(eye)).T


# (parent attributes, out_features, q rows, k rows, v rows), rows written out by hand
THIRDS = ({}, 12, [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11])
# TinyViT (attn_ratio 1): 2 heads of key_dim 2, each head's [q q k k v v] in turn
TINY_VIT = ({"num_heads": 2, "key_dim": 2, "val_dim": 2}, 12, [0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11])
# EfficientFormer (attn_ratio 2): values twice the keys' width, [q q k k v v v v] per head
EFFICIENTFORMER = ({"num_heads": 2, "key_dim": 2, "val_dim": 4}, 16, [0, 1, 8, 9], [2, 3, 10, 11],
                   [4, 5, 6, 7, 12, 13, 14, 15])
# MaxViT (head_first): per head, equal widths
MAXVIT = ({"num_heads": 2, "dim_head": 2, "head_first": True}, 12, [0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11])
MAXVIT_THIRDS = ({"num_heads": 2, "dim_head": 2, "head_first": False}, *THIRDS[1:])
# GCViT's global attention: qkv is 2·dim wide, [k k k k | v v v v] (q comes from the global query generator)
GCVIT_GLOBAL = ({"num_heads": 2, "head_dim": 2, "use_global": True}, 8, [], [0, 1, 2, 3], [4, 5, 6, 7])
# ... and with 2·dim divisible by 3 (dim 6), where thirds would silently adapt the wrong rows
GCVIT_GLOBAL_DIM_6 = ({"num_heads": 2, "head_dim": 3, "use_global": True}, 12, [], list(range(6)), list(range(6, 12)))
GCVIT_WINDOW = ({"num_heads": 2, "head_dim": 2, "use_global": False}, *THIRDS[1:])


@pytest.mark.parametrize("attrs, out, q, k, v", [THIRDS, TINY_VIT, EFFICIENTFORMER, MAXVIT, MAXVIT_THIRDS,
                                                 GCVIT_GLOBAL, GCVIT_GLOBAL_DIM_6, GCVIT_WINDOW],
                         ids=["thirds", "tiny_vit", "efficientformer", "maxvit", "maxvit_not_head_first",
                              "gcvit_global", "gcvit_global_dim_6", "gcvit_window"])
def test_qv_adapts_exactly_the_q_and_v_rows(attrs, out, q, k, v):
    holder = Holder(out, **attrs)
    assert add_lora(holder, RANK, ALPHA, ["qv"]) == ["qkv"]
    layer = randomised(holder.qkv)
    delta = effective_delta(layer)
    assert torch.equal(delta[k], torch.zeros(len(k), 8))  # the keys' rows are untouched, bit for bit
    scale = ALPHA / RANK
    adapted = [rows for rows in (q, v) if rows]  # one (A, B) pair per part the layer has, q first
    assert len(layer.lora_a) == len(layer.lora_b) == len(adapted)
    for rows, a, b in zip(adapted, layer.lora_a, layer.lora_b):
        assert torch.allclose(delta[rows], scale * b.weight @ a.weight, atol=1e-5)
        assert bool((delta[rows].abs().sum(1) > 0).all())
    # the merged weight (what F.linear(x, qkv.weight, bias) parents read) is the same update
    with torch.no_grad():
        assert torch.equal(layer.weight[k], layer.base.weight[k])
        assert torch.allclose(layer.weight - layer.base.weight, delta, atol=1e-6)


def test_thirds_keeps_its_names_shapes_and_outputs():
    """SAM's/ViT's checkpoints: same parameter names and shapes, and the forward before layouts
    (chunk in 3, add, concatenate) reproduced bit for bit."""
    holder = Holder(24)
    add_lora(holder, RANK, ALPHA, ["qv"])
    layer = randomised(holder.qkv)
    shapes = {n: tuple(p.shape) for n, p in holder.named_parameters()}
    assert shapes == {"qkv.base.weight": (24, 8), "qkv.base.bias": (24,), "qkv.lora_a.0.weight": (2, 8),
                      "qkv.lora_a.1.weight": (2, 8), "qkv.lora_b.0.weight": (8, 2), "qkv.lora_b.1.weight": (8, 2)}
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        q, k, v = layer.base(x).chunk(3, dim=-1)
        old = torch.cat([q + layer.scale * layer.lora_b[0](layer.lora_a[0](x)), k,
                         v + layer.scale * layer.lora_b[1](layer.lora_a[1](x))], dim=-1)
        assert torch.equal(layer(x), old)


def test_start_is_unchanged_and_per_head_shapes():
    holder = Holder(16, **EFFICIENTFORMER[0])
    x = torch.randn(4, 8)
    before = holder.qkv(x)
    add_lora(holder, RANK, ALPHA, ["qv"])
    assert holder.qkv.layout == QKVLayout.per_head(2, 2, 4)
    assert [tuple(b.weight.shape) for b in holder.qkv.lora_b] == [(4, 2), (8, 2)]  # q: 2 heads x 2, v: 2 x 4
    assert torch.equal(holder.qkv(x), before)  # B = 0 at start


def test_parents_that_read_the_weight_see_the_adapter():
    """EVA/BEiT/Swin V2 call ``F.linear(x, qkv.weight, qkv_bias)`` instead of the layer: ``weight``
    and ``bias`` give the adapted layer's outputs, and gradients reach A and B through them."""
    x = torch.randn(3, 8)
    fused = randomised(LoRAQKV(nn.Linear(8, 12), RANK, ALPHA))
    linear = LoRALinear(nn.Linear(8, 5), RANK, ALPHA)
    nn.init.normal_(linear.lora_b.weight)
    for layer in (fused, linear):
        out = F.linear(x, layer.weight, layer.bias)
        assert torch.allclose(out, layer(x), atol=1e-6) and not torch.allclose(out, layer.base(x), atol=1e-3)
        out.square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(layer))


def test_frozen_base_and_trainable_adapters_are_counted():
    holder = Holder(16, **EFFICIENTFORMER[0])
    assert freeze_with_lora(holder, True, {"rank": RANK, "targets": ["qv"]}) == ["qkv"]
    trainable = sum(p.numel() for p in holder.parameters() if p.requires_grad)
    # A: 2 x (rank x in); B: rank x (heads x key_dim) for q, rank x (heads x val_dim) for v
    assert trainable == 2 * RANK * 8 + RANK * 4 + RANK * 8 == sum(p.numel() for p in lora_parameters(holder))
    assert not any(p.requires_grad for p in holder.qkv.base.parameters())


@pytest.mark.parametrize("out, attrs, message", [
    (20, {}, r"'qkv' has 20 outputs, not q, k, v in thirds, and its attention module names no per-head layout"),
    (12, {"num_heads": 2, "key_dim": 2, "val_dim": 4},
     r"'qkv' has 12 outputs but its attention's layout \(per head: 2 x \(q 2 \| k 2 \| v 4\)\) has 16"),
])
def test_a_layout_that_misses_outputs_is_one_line(out, attrs, message):
    with pytest.raises(ConfigError, match=message) as err:
        add_lora(Holder(out, **attrs), RANK, ALPHA, ["qv"])
    assert "\n" not in str(err.value) and "use lora targets [linear]" in str(err.value)
    with pytest.raises(ConfigError, match=r"the layout \(thirds of 4\) has 12 outputs, the fused layer 24"):
        LoRAQKV(nn.Linear(8, 24), RANK, ALPHA, QKVLayout.thirds(4))
    with pytest.raises(ConfigError, match=r"has no q or v outputs to adapt; use lora targets \[linear\]"):
        LoRAQKV(nn.Linear(8, 8), RANK, ALPHA, QKVLayout(1, 0, 8, 0))
