"""Model configuration: plain dataclasses read from YAML (safe loading) or CLI flags.

Unknown keys are errors with close matches, never silently ignored (the published
Flemme swallows misspelt keys through ``**kwargs``). Configs only *name* registered
components; they never import code. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from .errors import ConfigError, unknown_name_message

T = TypeVar("T")

DEFAULT_DIMS = 2
DEFAULT_IMAGE_SIZE = 128
DEFAULT_IN_CHANNELS = 1
DEFAULT_OUT_CHANNELS = 2


@dataclasses.dataclass
class EncoderConfig:
    """Parameters common to every encoder family; ``options`` holds the family's own.

    ``None`` means "the family's default"; the built encoder reports the resolved values.
    ``name`` ``None``: no family named; the builder picks an installed one deterministically and
    says so (:func:`flemme_core.build.default_encoder_name`): the core ships no encoder family.
    """

    name: str | None = None
    channels: list[int] | None = None
    num_blocks: int | list[int] | None = None
    patch_size: int | None = None
    norm: str | None = None
    act: str | None = None
    dropout: float = 0.0
    drop_path: float = 0.0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Filled by the model builder, not by the user:
    dims: int = DEFAULT_DIMS
    in_channels: int = DEFAULT_IN_CHANNELS
    image_size: list[int] = dataclasses.field(default_factory=lambda: [DEFAULT_IMAGE_SIZE] * DEFAULT_DIMS)
    context_dim: int | None = None

    USER_KEYS = ("name", "channels", "num_blocks", "patch_size", "norm", "act", "dropout", "drop_path")


@dataclasses.dataclass
class ModelConfig:
    """Everything needed to rebuild a model: stored verbatim in every checkpoint.

    ``encoder`` is ``None`` for an architecture registered with ``encoder=False`` (a whole
    network, e.g. MONAI's UNet from flemme-monai); the builder sets it so.
    """

    arch: str = "unet"
    encoder: EncoderConfig | None = dataclasses.field(default_factory=EncoderConfig)
    dims: int = DEFAULT_DIMS
    image_size: list[int] = dataclasses.field(default_factory=lambda: [DEFAULT_IMAGE_SIZE] * DEFAULT_DIMS)
    in_channels: int = DEFAULT_IN_CHANNELS
    out_channels: int = DEFAULT_OUT_CHANNELS
    arch_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        enc = data["encoder"]
        for key in ("dims", "in_channels", "image_size", "context_dim"):
            if enc is not None:
                enc.pop(key, None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _check_keys(data: Mapping[str, Any], allowed: list[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise ConfigError(unknown_name_message(f"key in {where}:", str(key), allowed))


def as_mapping(value: Any, where: str) -> dict[str, Any]:
    """A config section that must be a mapping; anything else is one line naming the key and the type."""
    if not isinstance(value, Mapping):
        text = repr(value)
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(value).__name__} "
                          f"{text if len(text) <= 40 else text[:37] + '...'}")
    return dict(value)


def encoder_section(value: Any, where: str = "model.encoder") -> dict[str, Any]:
    """``model.encoder`` as a mapping: a family name becomes ``{name: ...}``, null ``{}``; else one line."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a family name or a mapping (name:, channels:, ...), got "
                          f"{type(value).__name__} {value!r:.40}")
    return dict(value)


def _int_list(value: Any, where: str) -> list[int]:
    if isinstance(value, str):
        value = [v for v in value.replace("x", ",").split(",") if v.strip()]
    if isinstance(value, (int, float)):
        value = [value]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be integers like 32,64,128, got {value!r}") from None
    if not out or any(v <= 0 for v in out):
        raise ConfigError(f"{where} must be positive integers, got {value!r}")
    return out


def encoder_config_from_dict(data: Mapping[str, Any] | str) -> EncoderConfig:
    """Common keys go to fields; any other key is a family option the family validates."""
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise ConfigError(f"model.encoder must be a family name or a mapping, got {type(data).__name__}")
    data = dict(data)
    options = as_mapping(data.pop("options", None) or {}, "model.encoder.options")
    cfg = EncoderConfig()
    for key, value in data.items():
        if key in EncoderConfig.USER_KEYS:
            setattr(cfg, key, value)
        else:
            options[key] = value
    cfg.options = options
    if cfg.name is not None and not isinstance(cfg.name, str):
        raise ConfigError(f"model.encoder.name must be a string, got {cfg.name!r}")
    for key in ("norm", "act"):
        value = getattr(cfg, key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"model.encoder.{key} must be a name (e.g. {'instance' if key == 'norm' else 'relu'}), "
                              f"got {type(value).__name__} {value!r:.40}")
    if cfg.channels is not None:
        cfg.channels = _int_list(cfg.channels, "model.encoder.channels")
    if cfg.num_blocks is not None and not isinstance(cfg.num_blocks, int):
        cfg.num_blocks = _int_list(cfg.num_blocks, "model.encoder.num_blocks")
    for key in ("dropout", "drop_path"):
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"model.encoder.{key} must be a number in [0, 1), got {value!r}")
        setattr(cfg, key, float(value))
    return cfg


MODEL_KEYS = [f.name for f in dataclasses.fields(ModelConfig)]


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """Validate a ``model:`` mapping into a :class:`ModelConfig` (dims follow image_size)."""
    _check_keys(data, MODEL_KEYS, "model")
    data = dict(data)
    cfg = ModelConfig()
    if "encoder" in data:
        encoder = data.pop("encoder")
        cfg.encoder = None if encoder is None else encoder_config_from_dict(encoder)
    for key, value in data.items():
        setattr(cfg, key, value)
    for key in ("in_channels", "out_channels", "dims"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")
    if cfg.dims not in (2, 3):
        raise ConfigError(f"model.dims must be 2 or 3, got {cfg.dims}")
    size = _int_list(cfg.image_size, "model.image_size")
    if "image_size" not in data:  # the default size per axis, in as many axes as dims says
        size = size[:1] * cfg.dims
    if len(size) == 1:
        size = size * cfg.dims
    elif "dims" not in data:
        cfg.dims = len(size)
    if len(size) != cfg.dims:
        raise ConfigError(f"model.image_size has {len(size)} values but dims is {cfg.dims}; give one size or {cfg.dims}")
    cfg.image_size = size
    if not isinstance(cfg.arch, str):
        raise ConfigError(f"model.arch must be a string, got {cfg.arch!r}")
    if not isinstance(cfg.arch_options, Mapping):
        raise ConfigError("model.arch_options must be a mapping")
    cfg.arch_options = dict(cfg.arch_options)
    if cfg.loss is not None:
        cfg.loss = normalize_loss_spec(cfg.loss)
    return cfg


def normalize_loss_spec(spec: Any) -> list[dict[str, Any]]:
    """'dice_ce', ['dice', 'ce'] or [{name: dice, weight: 0.5, ...}] -> list of dicts."""
    if isinstance(spec, (str, Mapping)):
        spec = [spec]
    if not isinstance(spec, (list, tuple)):
        raise ConfigError(f"model.loss must be a loss name, a mapping or a list of them, got {type(spec).__name__} "
                          f"{spec!r:.40}")
    out = []
    for item in spec:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or "name" not in item:
            raise ConfigError(f"each loss must be a name or a mapping with 'name', got {item!r}")
        item = dict(item)
        weight = item.setdefault("weight", 1.0)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"loss {item['name']!r} weight must be a non-negative number, got {weight!r}")
        out.append(item)
    return out


def parse_options(cls: type[T], options: Mapping[str, Any], where: str) -> T:
    """Build a family's or architecture's options dataclass; unknown keys list close matches."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _check_keys(options, list(fields), where)
    hints = get_type_hints(cls)
    values = {}
    for key, value in options.items():
        values[key] = _coerce(value, hints.get(key), f"{where}.{key}")
    # A family's or architecture's own checks (``__post_init__``, ``validate()``) may raise
    # ValueError/TypeError/AssertionError: that is a bad value in the user's config, reported as
    # one ConfigError line naming where, never a traceback from inside the plugin.
    try:
        obj = cls(**values)
        check = getattr(obj, "validate", None)
        if callable(check):
            check()
    except (ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is float and isinstance(value, int):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def choice(value: str, choices: list[str] | tuple[str, ...], where: str) -> str:
    """Check a string option against its allowed values."""
    if value not in choices:
        raise ConfigError(unknown_name_message(f"value for {where}:", str(value), choices))
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config with safe loading; a missing or malformed file is one line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    from .safeload import load_yaml_text

    try:
        data = load_yaml_text(path.read_text(), f"config file {str(path)!r}")  # bounded depth and aliases
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: "
                          f"{getattr(exc, 'problem', exc)}") from None
    if data is None:
        raise ConfigError(f"config file {str(path)!r} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping (model:, train:, data:)")
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply ``encoder.block=res_conv`` style overrides to a nested mapping."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a mapping")
    node[parts[-1]] = value
