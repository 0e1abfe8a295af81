"""Low-rank adapters (LoRA) for the linear and convolution layers of a (frozen) branch.

``y = W x + (alpha / rank) · B(A(x))`` with ``B`` zero-initialised, so wrapping a layer
changes nothing until training moves ``B``; the wrapped layer's own weights stay frozen.
For a convolution, ``A`` is a convolution with the layer's kernel, stride, padding and
dilation to ``rank`` channels and ``B`` a 1×1 convolution back, so shapes always match.

The target ``qv`` is LoRA on the attention queries and values only (MMFD on MedSAM, after
SAMed): a fused ``qkv`` linear gets one adapter on its q outputs and one on its v outputs (the
k outputs are untouched), and separate ``q_proj``/``v_proj`` (``query``/``value``) linears are
wrapped whole. Where q and v sit among a fused layer's outputs is a :class:`QKVLayout` read off
the attention module that holds it (:func:`qkv_layout`): in thirds for SAM's and timm's ViT,
per head for TinyViT (MobileSAM's and timm's), EfficientFormer and MaxViT, k and v only for
GCViT's global attention (its queries come from elsewhere). Used by flemme-mmfd's branches and
flemme-timm's pretrained families.

Some attentions never call their ``qkv`` module: timm's EVA, BEiT and Swin V2 add their separate
``q_bias``/``v_bias`` through ``F.linear(x, self.qkv.weight, bias)``. So the linear adapters also
read like the ``nn.Linear`` they replace: ``weight`` is the frozen weight with the low-rank update
merged at the same rows the forward adapts, ``bias`` the frozen bias, and LoRA acts whichever way
the parent uses the layer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from flemme_core.config import parse_options
from flemme_core.errors import ConfigError


@dataclasses.dataclass
class LoRAOptions:
    """Low-rank adapters on a frozen module's layers (``W x + (alpha / rank) B A x``, B = 0 at start)."""

    rank: int = 4
    alpha: float = 4.0
    targets: list[str] = dataclasses.field(default_factory=lambda: ["linear"])  # linear | conv | qv | name regexes

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not self.targets:
            raise ConfigError("lora.targets is empty; name linear, conv, qv, or regexes of layer names")

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _Adapter(nn.Module):
    """A frozen ``base`` layer and its low-rank pairs ``(A, B)``, each update ``(alpha / rank) B A x``.

    The subclasses only say what ``A`` and ``B`` are (and, for fused qkv, where the updates go).
    """

    def __init__(self, base: nn.Module, lora_a: nn.Module, lora_b: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.lora_a = lora_a
        self.lora_b = lora_b
        pairs = zip(lora_a, lora_b) if isinstance(lora_a, nn.ModuleList) else [(lora_a, lora_b)]
        for a, b in pairs:  # B = 0: wrapping changes nothing until training moves B
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)
        self.scale = alpha / rank

    def update(self, x: torch.Tensor, a: nn.Module, b: nn.Module) -> torch.Tensor:
        return self.scale * b(a(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.update(x, self.lora_a, self.lora_b)

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen bias (LoRA adds none), for parents that read the layer's parameters."""
        return self.base.bias


class LoRALinear(_Adapter):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base, nn.Linear(base.in_features, rank, bias=False),
                         nn.Linear(rank, base.out_features, bias=False), rank, alpha)

    @property
    def weight(self) -> torch.Tensor:
        """``W + (alpha / rank) B A``: what ``F.linear(x, layer.weight, ...)`` must use to see the adapter."""
        return self.base.weight + self.scale * self.lora_b.weight @ self.lora_a.weight


class LoRAConv(_Adapter):
    """A frozen convolution plus a trainable rank-``r`` update (same geometry, any dims)."""

    def __init__(self, base: nn.Conv1d | nn.Conv2d | nn.Conv3d, rank: int, alpha: float):
        conv = type(base)
        super().__init__(base, conv(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                                    dilation=base.dilation, groups=1, bias=False, padding_mode=base.padding_mode),
                         conv(rank, base.out_channels, 1, bias=False), rank, alpha)


@dataclasses.dataclass(frozen=True)
class QKVLayout:
    """Where q, k and v sit among a fused ``qkv`` linear's outputs: ``groups`` blocks in turn,
    each ``[q (q_dim) | k (k_dim) | v (v_dim)]``.

    Attention code reshapes the fused output one of two ways, and a LoRA on "the q rows" must
    follow it or it adapts mixed query/key/value channels without any shape error:

    * ``(3, heads, head_dim)``: SAM's and timm's ViT, CLIP: one group, q, k, v in thirds
      (:meth:`thirds`);
    * ``(heads, q + k + v)``: TinyViT (MobileSAM's and timm's), EfficientFormer, MaxViT:
      one group per head (:meth:`per_head`), so head h's queries, keys and values are
      consecutive and the values may be wider than the keys (``attn_ratio``).

    ``q_dim`` 0 is a layer without queries: GCViT's global attention reshapes its ``qkv`` as
    ``(2, heads, head_dim)``, k then v, and takes q from its global query generator
    (:meth:`kv_halves`).
    """

    groups: int
    q_dim: int
    k_dim: int
    v_dim: int

    @classmethod
    def thirds(cls, width: int) -> QKVLayout:
        return cls(1, width, width, width)

    @classmethod
    def per_head(cls, num_heads: int, key_dim: int, v_dim: int) -> QKVLayout:
        return cls(num_heads, key_dim, key_dim, v_dim)

    @classmethod
    def kv_halves(cls, width: int) -> QKVLayout:
        return cls(1, 0, width, width)

    @property
    def out_features(self) -> int:
        return self.groups * (self.q_dim + self.k_dim + self.v_dim)

    def __str__(self) -> str:
        if self.groups == 1 and self.q_dim == self.k_dim == self.v_dim:
            return f"thirds of {self.q_dim}"
        if self.groups == 1 and self.q_dim == 0 and self.k_dim == self.v_dim:
            return f"k and v halves of {self.k_dim}"
        return f"per head: {self.groups} x (q {self.q_dim} | k {self.k_dim} | v {self.v_dim})"


def _ints(module: nn.Module | None, *names: str) -> bool:
    return all(isinstance(getattr(module, n, None), int) for n in names)


def qkv_layout(attention: nn.Module | None, qkv: nn.Linear, name: str = "qkv") -> QKVLayout:
    """The layout of ``qkv``'s outputs, from the attention module that holds it (its parent).

    Read from the attributes the per-head attentions keep for their own reshape: ``num_heads``
    with ``key_dim`` and ``val_dim`` (LeViT's lineage: timm's ``tiny_vit`` and ``efficientformer``;
    MobileSAM's TinyViT is timm's here), or ``num_heads`` with ``dim_head`` and
    ``head_first`` set (timm's ``maxxvit``); ``num_heads`` with ``head_dim`` and ``use_global``
    set is k and v only (timm's ``gcvit`` global attention, whose q comes from its global query
    generator). Anything else is thirds, as SAM's and timm's ViT reshape it. The layout must
    account for every output, or one line says so (so GCViT's global layer, 2·dim wide, is
    never split in thirds even where 2·dim divides by 3).
    """
    heads = getattr(attention, "num_heads", None)
    if _ints(attention, "num_heads", "key_dim", "val_dim"):
        layout = QKVLayout.per_head(heads, attention.key_dim, attention.val_dim)  # type: ignore[union-attr]
    elif _ints(attention, "num_heads", "dim_head") and getattr(attention, "head_first", False) is True:
        layout = QKVLayout.per_head(heads, attention.dim_head, attention.dim_head)  # type: ignore[union-attr]
    elif _ints(attention, "num_heads", "head_dim") and getattr(attention, "use_global", False) is True:
        layout = QKVLayout.kv_halves(heads * attention.head_dim)  # type: ignore[union-attr,operator]
    elif qkv.out_features % 3:
        raise ConfigError(f"lora target qv: fused layer {name!r} has {qkv.out_features} outputs, not q, k, v in "
                          f"thirds, and its attention module names no per-head layout (num_heads, key_dim, val_dim); "
                          f"use lora targets [linear] or a regex of other layer names")
    else:
        layout = QKVLayout.thirds(qkv.out_features // 3)
    if layout.out_features != qkv.out_features:
        raise ConfigError(f"lora target qv: fused layer {name!r} has {qkv.out_features} outputs but its attention's "
                          f"layout ({layout}) has {layout.out_features}; use lora targets [linear] or a regex of "
                          f"other layer names")
    return layout


class LoRAQKV(_Adapter):
    """A frozen fused ``qkv`` linear plus trainable rank-``r`` updates of its q and v outputs.

    ``layout`` (default: thirds) says where they sit. One pair per part the layer has, listed in
    :attr:`parts`: ``lora_a.{0,1}`` and ``lora_b.{0,1}`` are q's and v's whatever the layout
    (``lora_b``'s rows in the layout's group order), so checkpoints of the thirds layout keep their
    names and shapes; a k-and-v layer (GCViT's global attention) has v's pair alone, ``.0``. The
    forward and :attr:`weight` place the updates through the same :meth:`_add`.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, layout: QKVLayout | None = None):
        layout = layout or qkv_layout(None, base)
        if layout.out_features != base.out_features:
            raise ConfigError(f"lora target qv: the layout ({layout}) has {layout.out_features} outputs, the fused "
                              f"layer {base.out_features}; give the layout of this layer's attention (qkv_layout)")
        widths = {"q": layout.groups * layout.q_dim, "v": layout.groups * layout.v_dim}
        parts = tuple(part for part, width in widths.items() if width)
        if not parts:
            raise ConfigError(f"lora target qv: the layout ({layout}) has no q or v outputs to adapt; "
                              f"use lora targets [linear] or a regex of other layer names")
        super().__init__(base, nn.ModuleList(nn.Linear(base.in_features, rank, bias=False) for _ in parts),
                         nn.ModuleList(nn.Linear(rank, widths[part], bias=False) for part in parts), rank, alpha)
        self.layout = layout
        self.parts = parts

    def _add(self, out: torch.Tensor, update: Callable[[nn.Module, nn.Module], torch.Tensor],
             dim: int = -1) -> torch.Tensor:
        """``out`` (``dim``: the layer's outputs) plus ``update(a, b)`` (``dim``: that part's
        outputs, in group order) at each adapted part's rows; the k rows are passed through."""
        lay, dim = self.layout, dim % out.dim()
        q, k, v = out.unflatten(dim, (lay.groups, -1)).split([lay.q_dim, lay.k_dim, lay.v_dim], dim=dim + 1)
        split = {"q": q, "k": k, "v": v}
        for part, a, b in zip(self.parts, self.lora_a, self.lora_b):
            split[part] = split[part] + update(a, b).unflatten(dim, (lay.groups, -1))
        return torch.cat([split["q"], split["k"], split["v"]], dim=dim + 1).flatten(dim, dim + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add(self.base(x), lambda a, b: self.update(x, a, b))

    @property
    def weight(self) -> torch.Tensor:
        """The frozen weight with ``(alpha / rank) B A`` merged at the q and v rows: what a parent
        that calls ``F.linear(x, qkv.weight, bias)`` (EVA, BEiT, Swin V2) must use to see LoRA
        (laid out as the frozen weight, so B = 0 gives its outputs bit for bit)."""
        return self._add(self.base.weight, lambda a, b: self.scale * b.weight @ a.weight, dim=0)

    def extra_repr(self) -> str:
        return f"layout: {self.layout}, parts: {', '.join(self.parts)}"


ADAPTERS = (_Adapter,)
FUSED_QKV = re.compile(r"(^|\.)qkv$")
SEPARATE_QV = re.compile(r"(^|\.)(q_proj|v_proj|query|value)$")


def _wanted(name: str, layer: nn.Module, targets: Sequence[str]) -> bool:
    for target in targets:
        if target == "qv" and isinstance(layer, nn.Linear) and (FUSED_QKV.search(name) or SEPARATE_QV.search(name)):
            return True
        if target == "linear" and isinstance(layer, nn.Linear):
            return True
        if target == "conv" and isinstance(layer, CONVS):
            return True
        if target not in ("linear", "conv", "qv") and re.search(target, name) and isinstance(layer, (nn.Linear, *CONVS)):
            return True
    return False


def add_lora(module: nn.Module, rank: int, alpha: float, targets: Sequence[str]) -> list[str]:
    """Wrap every matching layer of ``module`` in place; returns the wrapped layer names.

    ``targets``: ``linear``, ``conv``, ``qv`` (attention queries and values, see the module
    docstring; a fused ``qkv``'s layout comes from its parent, :func:`qkv_layout`), or regular
    expressions searched in layer names. Matching nothing is an error.
    """
    chosen = [(name, layer) for name, layer in module.named_modules()
              if name and _wanted(name, layer, targets) and not isinstance(layer, ADAPTERS)
              and ".lora_" not in f".{name}"]
    if not chosen:
        raise ConfigError(f"lora.targets {list(targets)} match no linear/conv layer of this module; "
                          f"use linear, conv, qv (attention q and v), or a regex of its layer names")
    for name, layer in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if isinstance(layer, nn.Linear) and "qv" in targets and FUSED_QKV.search(name):
            wrapped: nn.Module = LoRAQKV(layer, rank, alpha, qkv_layout(parent, layer, name))
        elif isinstance(layer, nn.Linear):
            wrapped = LoRALinear(layer, rank, alpha)
        else:
            wrapped = LoRAConv(layer, rank, alpha)
        setattr(parent, attr, wrapped)
    return [name for name, _ in chosen]


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapters' own parameters (what stays trainable in a frozen branch)."""
    return [p for m in module.modules() if isinstance(m, ADAPTERS)
            for p in (*m.lora_a.parameters(), *m.lora_b.parameters())]


def freeze_with_lora(module: nn.Module, freeze: bool, lora: Any | None) -> list[str]:
    """Freeze ``module`` (no gradient) and/or add adapters from a ``{rank, alpha, targets}``
    mapping or :class:`LoRAOptions`; returns the wrapped layer names."""
    if freeze:
        for p in module.parameters():
            p.requires_grad_(False)
    if lora is None:
        return []
    opts = lora if isinstance(lora, LoRAOptions) else parse_options(LoRAOptions, dict(lora), "lora")
    return add_lora(module, opts.rank, opts.alpha, opts.targets)
