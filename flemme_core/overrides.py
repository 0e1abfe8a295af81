"""Command-line changes to a config (``--encoder``, ``--set key=value``) applied so that the
result is what the user asked for, not a mix of two models.

* ``--set model.key=null`` (and ``data.key=null``) removes the key, so the default applies
  (``--set encoder.block=null`` drops a family option). Under ``train:`` null is a value
  (``train.clip=null`` switches clipping off).
* Changing the encoder family (``--encoder swin`` on a cnn config) drops the previous
  family's own options (``block``, ``down``, ...) and keeps the common keys that describe the
  model's shape and regularisation (``channels``, ``num_blocks``, ``patch_size``, ``dropout``,
  ``drop_path``); ``norm`` and ``act`` name the previous family's layers (a cnn's ``instance``
  norm is not a token norm), so they return to the new family's defaults unless given again.
  Everything dropped is reported as a note: the point of the platform is swapping encoders
  on a fixed task.

No torch, no registry: cheap for ``flemme --help``.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ConfigError

#: encoder keys that every family understands (:class:`flemme_core.config.EncoderConfig`).
COMMON_ENCODER_KEYS = ("name", "channels", "num_blocks", "patch_size", "norm", "act", "dropout", "drop_path")
#: the common keys kept when the family changes.
KEPT_ON_FAMILY_CHANGE = ("name", "channels", "num_blocks", "patch_size", "dropout", "drop_path")


def apply_override(data: dict[str, Any], dotted: str, value: Any, notes: list[str] | None = None,
                   model_prefix: str = "") -> None:
    """Set ``dotted`` in ``data`` (creating mappings on the way), with the rules above.

    ``model_prefix`` is the path of the model section inside ``data`` (``"model."`` in a run
    config, ``""`` for a bare model mapping); ``notes`` collects what was dropped.
    """
    parts = dotted.split(".")
    rel = dotted[len(model_prefix):] if dotted.startswith(model_prefix) else None  # path inside the model
    if rel in ("encoder", "encoder.name") and isinstance(value, str):
        _change_family(data, model_prefix, value, notes)
        if rel == "encoder":
            parts = parts + ["name"]
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a mapping")
    removable = rel is not None or parts[0] == "data"
    if value is None and removable:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def _change_family(data: dict[str, Any], model_prefix: str, name: str, notes: list[str] | None) -> None:
    model = data
    for part in [p for p in model_prefix.split(".") if p]:
        model = model.get(part) if isinstance(model, dict) else None
    if not isinstance(model, dict):
        return
    encoder = model.get("encoder")
    if isinstance(encoder, str):
        encoder = model["encoder"] = {"name": encoder}
    if not isinstance(encoder, dict):
        return
    old = encoder.get("name")
    if old is None or old == name:
        return
    dropped = {k: v for k, v in encoder.items() if k not in KEPT_ON_FAMILY_CHANGE}
    if isinstance(dropped.get("options"), dict):
        dropped.update(dropped.pop("options"))
    for key in [k for k in encoder if k not in KEPT_ON_FAMILY_CHANGE]:
        del encoder[key]
    if notes is not None:
        kept = [k for k in KEPT_ON_FAMILY_CHANGE[1:] if k in encoder]
        what = ", ".join(f"{k}={v}" for k, v in dropped.items()) or "none"
        notes.append(f"encoder family {old} -> {name}: dropped {old}'s own settings ({what}; norm/act take "
                     f"{name}'s defaults); kept {', '.join(kept) or 'no common keys'}; give others with "
                     "--set encoder.KEY=VALUE")


def parse_set_value(text: str) -> Any:
    """YAML scalar parsing for ``--set key=value`` (numbers, booleans, lists, null); text that is
    not YAML stays a string."""
    import yaml

    from .safeload import load_yaml_text

    try:
        value = load_yaml_text(text, f"--set value {text[:40]!r}")
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string; a learning rate is meant
    return value


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_set(item: str, example: str = "encoder.block=res_conv") -> tuple[str, Any]:
    """One ``--set KEY=VALUE`` item -> (dotted key, parsed value): the one parser of every
    command's ``--set`` (build, train, eval, compare); a malformed item is one line."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. {example}), got {item!r}")
    return key, parse_set_value(value.strip())
