"""Initialise a branch from a local safetensors file, with key remapping and a strict report.

Two sources: a flemme model checkpoint (the encoder's keys are under ``encoder.``), or
foreign weights (a foundation model converted to safetensors) whose key names differ
from the family's: ``key_map`` rewrites them with regular expressions, in order. Every
load produces a :class:`LoadReport` (loaded, missing, unexpected, shape-mismatched keys);
with ``strict`` any problem is a one-line :class:`CheckpointError`, otherwise a warning.
Only safetensors is read (never pickle).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flemme_core.errors import CheckpointError, ConfigError


@dataclasses.dataclass
class LoadReport:
    """What a weight load did; ``ok`` when every model key was filled and nothing was left over."""

    source: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        def few(keys: list[Any]) -> str:
            return ", ".join(str(k) for k in keys[:3]) + (" ..." if len(keys) > 3 else "")

        parts = [f"{len(self.loaded)} loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({few(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({few(self.unexpected)})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape-mismatched "
                         f"({few([f'{k} {tuple(a)} vs {tuple(b)}' for k, a, b in self.mismatched])})")
        return f"{self.source}: " + "; ".join(parts)


def parse_key_map(key_map: Any) -> list[tuple[re.Pattern[str], str | None]]:
    """``[[regex, replacement], ...]`` or ``{regex: replacement}`` -> compiled rules (None drops)."""
    if key_map is None:
        return []
    items = list(key_map.items()) if isinstance(key_map, Mapping) else key_map
    rules = []
    for item in items:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
                and (item[1] is None or isinstance(item[1], str))):
            raise ConfigError(f"key_map entries must be [regex, replacement or null], got {item!r}")
        try:
            rules.append((re.compile(item[0]), item[1]))
        except re.error as exc:
            raise ConfigError(f"key_map regex {item[0]!r} is invalid: {exc}") from None
    return rules


def remap_keys(state: Mapping[str, torch.Tensor], key_map: Any = None,
               prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Keep keys under ``prefix`` (stripped), then apply each rule; a rule to ``None`` drops a key.

    A rule applies to keys its regex *searches* into; the first matching rule wins.
    """
    rules = parse_key_map(key_map)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        for pattern, replacement in rules:
            if pattern.search(key):
                key = None if replacement is None else pattern.sub(replacement, key)
                break
        if key is None:
            continue
        if key in out:
            raise ConfigError(f"key_map maps two source keys onto {key!r}; make the rules more specific")
        out[key] = value
    return out


def compare_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> LoadReport:
    """Which of ``state`` fits ``module``'s own state dict, key by key and shape by shape."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched, loaded = [], []
    for key in sorted(set(own) & set(state)):
        if tuple(own[key].shape) != tuple(state[key].shape):
            mismatched.append((key, tuple(state[key].shape), tuple(own[key].shape)))
        else:
            loaded.append(key)
    return LoadReport(source, loaded, missing, unexpected, mismatched)


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, strict: bool = True,
              hint: str = "fix key_map/prefix, or set strict: false to load only the matching keys") -> LoadReport:
    """Copy the matching tensors of ``state`` into ``module``; strict means all-or-error."""
    report = compare_state(module, state, source)
    if not report.ok:
        if strict:
            raise CheckpointError(f"weights do not fit: {report.summary()}; {hint}")
        warnings.warn(f"partial weight load: {report.summary()}", stacklevel=2)
    with torch.no_grad():
        own = module.state_dict()
        for key in report.loaded:
            own[key].copy_(state[key])
    return report


def read_safetensors(path: str | Path, keep: Callable[[str], bool] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (those whose key ``keep`` accepts; all by default) and the metadata of a
    local safetensors file (one-line errors). Tensors not kept are never read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist; give a local .safetensors path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys() if keep is None or keep(k)}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file to the user
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return tensors, meta
