"""The mixer ablation contract, checked: ``mixer: identity`` removes the mixer and nothing else.

The "No-Mamba" control of "nnU-Net Revisited" (Isensee et al., 2024) asks whether a
token mixer (attention, a selective scan) earns its cost by training the same network
with the mixer replaced by the identity. A family opts in by listing ``"identity"`` in
``BlockFamily.mixers`` and naming its mixer's parameters in ``BlockFamily.mixer_parameters``;
:func:`check_identity_mixer` is what a plugin's tests (and ``flemme_core.testing``'s
conformance kit) call to show the opt-in is honest.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch

from .config import EncoderConfig
from .encoder import Encoder


def _build(factory: Callable[[EncoderConfig], Encoder], cfg: EncoderConfig, seed: int) -> Encoder:
    torch.manual_seed(seed)
    return factory(cfg)


def check_identity_mixer(family: str | Callable[[EncoderConfig], Encoder], dims: int = 2, size: int = 16,
                         seed: int = 0, **encoder: Any) -> dict[str, list[str]]:
    """Build ``family`` with its own mixer and with ``mixer: identity`` and check the contract.

    ``family`` is a registered encoder name or an encoder factory (``staged_encoder(F)``);
    ``encoder`` holds more encoder keys (``channels``, family options). Raises
    ``AssertionError`` naming the first broken rule:

    * the identity build has exactly the parameters of the normal build (same names and
      shapes) minus some, and at least one parameter is removed;
    * every removed parameter, and none that is kept, matches the family's
      ``mixer_parameters``;
    * with the shared parameters copied from the normal build, the output differs (the
      mixer did something) and the identity build runs forward and backward to finite
      gradients for every parameter.

    Returns ``{"kept": [...], "removed": [...]}`` parameter names.
    """
    if isinstance(family, str):
        from .build import build_encoder

        name, factory = family, build_encoder
    else:
        name, factory = getattr(getattr(family, "family", None), "name", "family"), family
    keys = dict(encoder)
    common = {k: keys.pop(k) for k in list(keys) if k in EncoderConfig.USER_KEYS}
    base = EncoderConfig(name=name, dims=dims, in_channels=1, image_size=[size] * dims,
                         **{"channels": [16, 32], "num_blocks": 1, **common}, options=keys)
    normal = _build(factory, base, seed).eval()
    ablated = _build(factory, dataclasses.replace(base, options={**keys, "mixer": "identity"}), seed).eval()
    pattern = getattr(normal.blocks, "mixer_parameters", "")
    assert pattern, f"{name}: the family declares no mixer_parameters (which parameters the mixer owns)"
    assert getattr(ablated.blocks, "mixer", None) == "identity", f"{name}: mixer: identity was not applied"

    full = {n: tuple(p.shape) for n, p in normal.named_parameters()}
    kept = {n: tuple(p.shape) for n, p in ablated.named_parameters()}
    extra = sorted(set(kept) - set(full))
    assert not extra, f"{name}: mixer: identity adds parameters {extra[:5]}"
    reshaped = sorted(n for n in kept if kept[n] != full[n])
    assert not reshaped, f"{name}: mixer: identity changes the shapes of {reshaped[:5]}"
    removed = sorted(set(full) - set(kept))
    assert removed, f"{name}: mixer: identity removes no parameter (is the mixer still built?)"
    regex = re.compile(pattern)
    not_mixer = [n for n in removed if not regex.search(n)]
    assert not not_mixer, f"{name}: mixer: identity removes parameters outside the mixer: {not_mixer[:5]}"
    left = [n for n in kept if regex.search(n)]
    assert not left, f"{name}: mixer parameters remain with mixer: identity: {left[:5]}"

    shared = normal.state_dict()
    ablated.load_state_dict({k: v for k, v in shared.items() if k in ablated.state_dict()})
    x = torch.randn(2, 1, *[size] * dims, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a = torch.cat([f.flatten(1) for f in normal(x)], 1)
        b = torch.cat([f.flatten(1) for f in ablated(x)], 1)
    assert a.shape == b.shape, f"{name}: mixer: identity changes the feature shapes"
    assert not torch.allclose(a, b), f"{name}: the output does not change without the mixer"
    ablated.train()
    sum(f.square().mean() for f in ablated(x)).backward()
    bad = [n for n, p in ablated.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: parameters without finite gradients under mixer: identity: {bad[:5]}"
    return {"kept": sorted(kept), "removed": removed}
