"""Read foreign weights from local files and load them with a strict, one-line report.

Sources: a flemme model checkpoint (the encoder's keys are under ``encoder.``), or foreign
weights (a foundation model as published) whose key names may differ from the module's:
``key_map`` rewrites them with regular expressions, in order. Every load produces a
:class:`LoadReport` (loaded, missing, unexpected, shape-mismatched keys); with ``strict``
any problem is a one-line :class:`CheckpointError`, otherwise a warning.

Files: safetensors as is; a published ``.pth``/``.pt``/``.bin``/``.ckpt`` only through
``torch.load(weights_only=True)`` (no arbitrary unpickling: a file that needs it is refused
in one line), its state dict found under the usual nesting (``state_dict``, ``model``, ...).
``flemme convert`` turns such a file into safetensors once.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
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
    from flemme_core.checkpoint import read_safetensors_file

    def read(fh: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        meta = fh.metadata() or {}
        return {k: fh.get_tensor(k) for k in fh.keys() if keep is None or keep(k)}, meta  # noqa: SIM118

    path = Path(path)
    return read_safetensors_file(path, read,
                                 f"weights file {str(path)!r} does not exist; give a local .safetensors path",
                                 f"{str(path)!r} is not a readable safetensors file")


#: keys under which training scripts nest the weights in a ``.pth`` (Lightning, DeiT, MAE, SAM fine-tunes).
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "params")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded ``.pth`` object: descend into the first of
    :data:`NESTED_KEYS` holding a mapping while there is one, then keep its tensors
    (non-tensor entries beside them, an ``epoch`` counter, are dropped)."""
    seen: list[str] = []
    while isinstance(obj, Mapping):
        nested = next((k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            break
        seen.append(nested)
        obj = obj[nested]
    where = "".join(f"[{k!r}]" for k in seen)
    kind = type(obj).__name__
    keys = list(obj)[:5] if isinstance(obj, Mapping) else []
    raise CheckpointError(f"{source}{where} holds no tensors ({kind}{' with keys ' + str(keys) if keys else ''}); "
                          f"give a file holding a state dict (directly or under one of {', '.join(NESTED_KEYS)})")


def read_torch_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.pth``/``.bin`` state dict through ``torch.load(weights_only=True)`` only."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist; give a local file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if not found:
            reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
            raise CheckpointError(f"{str(path)!r} is not a readable torch weights file: "
                                  f"{(reason.group(1) if reason else _first_line(exc))[:160]}") from None
        what = f"it stores the Python object {found.group(1)}"
        raise CheckpointError(
            f"{str(path)!r} needs full unpickling ({what}, not only tensors); flemme reads .pth files only with "
            f"torch.load(weights_only=True): re-save its state dict alone (torch.save(sd, ...)) in a session "
            f"you trust, or get its safetensors version") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt or foreign file to the user
        raise CheckpointError(f"{str(path)!r} is not a readable torch weights file: {_first_line(exc)[:200]}") from None
    return unwrap_state_dict(obj, repr(str(path)))


def is_safetensors(path: str | Path) -> bool:
    """By content (an 8-byte header length then a JSON header), whatever the suffix."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: safetensors as is, torch files via weights_only."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder; give a weights file (.safetensors, .pth, .bin)")
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist; give a local .safetensors, .pth or "
                              f".bin file (nothing is downloaded)")
    if path.suffix == ".safetensors" or is_safetensors(path):
        return read_safetensors(path)[0]
    return read_torch_weights(path)


def adapt_input_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A pretrained first convolution's RGB weight for ``in_channels`` inputs (smp's and timm's
    rule): summed over RGB for 1 channel, kept for 3, else cycled and scaled by 3 / C, so a grey
    image repeated C times gives what the RGB network gives on it repeated 3 times."""
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise CheckpointError(f"the first convolution takes {weight.shape[1]} channels; only RGB weights are adapted "
                              f"to {in_channels} input channels")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = [i % 3 for i in range(in_channels)]
    return weight[:, idx] * (3 / in_channels)


def adapt_constants(values: Sequence[float], in_channels: int) -> list[float]:
    """Per-channel normalisation constants (RGB mean or std) matching :func:`adapt_input_weight`:
    averaged for 1 channel, cycled for C."""
    values = [float(v) for v in values]
    if in_channels == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(in_channels)]
