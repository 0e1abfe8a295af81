"""A checkpoint's metadata, decoded and validated once, in one place.

A checkpoint is untrusted input: its metadata is JSON written by whoever made the file.
:func:`decode_metadata` parses every field with bounded nesting and checks its type, so
``info``, ``predict``, ``eval`` and ``build`` meet either valid metadata or one
:class:`~flemme_core.errors.CheckpointError` line naming the field. :func:`check_shapes`
compares the tensors the file holds with the model its config describes *before* any
weight is allocated (the model is built on torch's ``meta`` device), so a config asking
for channels [100000, 200000] costs nothing. Import-cheap: no torch at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .safeload import load_json_text

#: metadata key -> (field name, required JSON type, default text)
FIELDS = {
    "flemme.config": ("config", dict, None),
    "flemme.encoder_resolved": ("encoder_resolved", dict, "{}"),
    "flemme.versions": ("versions", dict, "{}"),
    "flemme.components": ("components", dict, "{}"),
    "flemme.provenance": ("provenance", dict, "{}"),
    "flemme.extra": ("extra", dict, "{}"),
}
#: trainer-written ``extra`` keys that are read back, with their type and, for numbers, bounds.
EXTRA_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "step": (int, "an integer"), "seed": (int, "an integer"), "task": (str, "a string"),
    "num_classes": (int, "an integer"), "class_names": (list, "a list of names"),
    "roi_size": (list, "a list of positive integers"), "spacing": (list, "a list of numbers"),
    "held_out": (str, "a string"), "data": (dict, "a mapping (the data: section)"),
    "preprocessing": (list, "a list of steps"), "normalize": (dict, "a mapping"),
    "sw": (dict, "a mapping"), "metrics": (dict, "a mapping"),
}
_TYPE_WORDS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer"}


def _bad(path: Path, field: str, want: str, got: Any) -> CheckpointError:
    return CheckpointError(f"{str(path)!r} has invalid flemme metadata: {field} must be {want}, got "
                           f"{type(got).__name__} {_short(got)}; the file is damaged or was not written by flemme")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_metadata(raw: Mapping[str, str], path: str | Path) -> dict[str, Any]:
    """Parse and validate the ``flemme.*`` metadata strings; every problem is one line."""
    path = Path(path)
    meta: dict[str, Any] = {}
    for key, (name, kind, default) in FIELDS.items():
        text = raw.get(key, default)
        value = load_json_text(text, f"{str(path)!r} metadata {key}", CheckpointError)
        if not isinstance(value, kind):
            raise _bad(path, key, _TYPE_WORDS[kind], value)
        meta[name] = value
    for key in ("versions", "components"):
        for k, v in meta[key].items():
            if not isinstance(v, str):
                raise _bad(path, f"flemme.{key}[{k!r}]", "a string", v)
    from .registry import KINDS

    for k in meta["components"]:
        if k.partition(":")[0] not in KINDS or not k.partition(":")[2]:
            raise _bad(path, "flemme.components key", f"'kind:name' with kind one of {', '.join(KINDS)}", k)
    for k, v in meta["provenance"].items():
        if not isinstance(v, str):
            raise _bad(path, f"flemme.provenance[{k!r}]", "a string", v)
    try:
        meta["parameters"] = int(raw.get("flemme.parameters", "0"))
    except ValueError:
        raise _bad(path, "flemme.parameters", "an integer", raw.get("flemme.parameters")) from None
    _check_config(meta["config"], path)
    _check_extra(meta["extra"], path)
    return meta


def _check_config(config: dict[str, Any], path: Path) -> None:
    """The stored model config must parse as a model config (the same parser as a YAML ``model:``)."""
    from .config import model_config_from_dict

    if "arch" not in config:
        raise CheckpointError(f"{str(path)!r} has invalid flemme metadata: its model config has no 'arch'; "
                              "the file is damaged or was not written by flemme")
    try:
        model_config_from_dict(config)
    except ConfigError as exc:
        raise CheckpointError(f"{str(path)!r} has an invalid stored model config: {exc}") from None


def _check_extra(extra: dict[str, Any], path: Path) -> None:
    for key, (kind, want) in EXTRA_TYPES.items():
        if key not in extra or extra[key] is None:
            continue
        value = extra[key]
        if not isinstance(value, kind) or (kind is int and not _is_int(value)):
            raise _bad(path, f"flemme.extra.{key}", want, value)
    roi = extra.get("roi_size")
    if roi is not None and (not roi or not all(_is_int(v) and 0 < v <= 4096 for v in roi)):
        raise _bad(path, "flemme.extra.roi_size", "a list of integers in 1..4096", extra["roi_size"])
    sw = extra.get("sw") or {}
    if "sw_batch_size" in sw and not (_is_int(sw["sw_batch_size"]) and 1 <= sw["sw_batch_size"] <= 1024):
        raise _bad(path, "flemme.extra.sw.sw_batch_size", "an integer in 1..1024", sw["sw_batch_size"])
    if "overlap" in sw and not (isinstance(sw["overlap"], (int, float)) and not isinstance(sw["overlap"], bool)
                                and 0.0 <= sw["overlap"] < 1.0):
        raise _bad(path, "flemme.extra.sw.overlap", "a number in [0, 1)", sw["overlap"])
    if "mode" in sw and sw["mode"] not in ("constant", "gaussian"):
        raise _bad(path, "flemme.extra.sw.mode", "'constant' or 'gaussian'", sw["mode"])


# -- weights against the described model --------------------------------------------------
def file_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors header (no tensor data is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}  # noqa: SIM118 - safe_open is not a dict


def shape_mismatches(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                     groups: list[list[str]] | None = None) -> str:
    """'' when the names and shapes agree; otherwise one clause naming the first differences.

    ``groups`` lists names that are one tensor (tied weights, stored once): a group is
    missing only when none of its names is in the file.
    """
    wrong = [f"{n} is {list(found[n])} in the file but {list(expected[n])} in the model"
             for n in expected if n in found and tuple(found[n]) != tuple(expected[n])]
    groups = groups if groups is not None else [[n] for n in expected]
    missing = sorted(g[0] for g in groups if not any(n in found for n in g))
    unexpected = sorted(set(found) - set(expected))
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} tensor(s) of the wrong shape (" + "; ".join(wrong[:3])
                     + ("; ..." if len(wrong) > 3 else "") + ")")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    return ", ".join(parts)


def expected_tensors(model: Any) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
    """Names and shapes of a model's state dict, and which names are one (tied) tensor."""
    import itertools

    state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    by_object: dict[int, list[str]] = {}
    named = itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        if name in expected:
            by_object.setdefault(id(tensor), []).append(name)
    grouped = {n for g in by_object.values() for n in g}
    return expected, list(by_object.values()) + [[n] for n in expected if n not in grouped]


def build_on_meta(config: Mapping[str, Any]) -> Any:
    """The model a config describes, with shapes but no storage (torch's meta device)."""
    import torch

    from .build import build_model

    with torch.device("meta"):
        return build_model(config)


def check_shapes(path: str | Path, meta: Mapping[str, Any]) -> None:
    """Refuse, before allocating anything, a file whose tensors do not fit the model its config describes."""
    from .build import build_model  # noqa: F401 - ensure the registry is ready (plugins checked by the caller)

    path = Path(path)
    try:
        model = build_on_meta(meta["config"])
    except (CheckpointError, ConfigError):
        raise
    except Exception:  # noqa: BLE001 - a family that cannot build on meta: the file's sizes bound the real build
        return
    expected, groups = expected_tensors(model)
    problem = shape_mismatches(expected, file_shapes(path), groups)
    if problem:
        versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
        raise CheckpointError(f"{str(path)!r} does not match the model its config describes: {problem}; the file "
                              f"is damaged, or was saved with other plugin versions ({versions or 'not recorded'})")
