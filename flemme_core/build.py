"""Turn a configuration into a model through the registry, and describe what was built."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from .architectures.base import Architecture
from .config import EncoderConfig, ModelConfig, model_config_from_dict
from .encoder import Encoder
from .errors import ConfigError, PluginError
from .registry import get_registry


def as_model_config(config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """Accept a ModelConfig, a ``model:`` mapping, or a whole config with a ``model`` key."""
    if isinstance(config, ModelConfig):
        return config
    if "model" in config and isinstance(config["model"], Mapping):
        config = config["model"]
    return model_config_from_dict(config)


#: the shipped distributions that provide encoder families (the core provides none), for the
#: message when none is installed.
ENCODER_PLUGINS = {"flemme-cnn": "cnn", "flemme-vit": "vit, swin", "flemme-mamba": "mamba",
                   "flemme-mmfd": "mmfd, a fusion of others"}


def default_encoder_name(announce: bool = True) -> str:
    """The encoder family used when a config names none.

    The core ships no family: with none installed this is one line naming the plugins that
    provide encoders; with several, the first in alphabetical order of those that build
    without options of their own (not a fusion needing branches), announced on stderr.
    """
    import sys

    registry = get_registry()
    families = registry.components("encoder")
    if not families:
        offer = "; ".join(f"{dist} ({names})" for dist, names in ENCODER_PLUGINS.items())
        raise ConfigError("no encoder family is installed (flemme-core provides none); install a plugin that "
                          f"provides one: {offer}, e.g. `pip install ./plugins/flemme-cnn`, or name yours")
    plain = sorted(n for n, c in families.items() if not c.metadata.get("example")) or sorted(families)
    name = plain[0]
    if announce and len(families) > 1:
        print(f"note: no encoder named; using {name!r} (installed: {', '.join(sorted(families))}); "
              "choose with --encoder or model.encoder.name", file=sys.stderr)
    return name


def build_encoder(config: EncoderConfig) -> Encoder:
    """Build any registered encoder family from a complete :class:`EncoderConfig`."""
    component = get_registry().get("encoder", config.name)
    encoder = _call_factory(component, config)
    if not isinstance(encoder, Encoder):
        raise PluginError(f"encoder family {config.name!r} from {component.provider} returned "
                          f"{type(encoder).__name__}, not a flemme_core.encoder.Encoder; the factory of "
                          f"{component.provider.name} is broken: upgrade it or report it to its authors")
    return encoder


def _call_factory(component: Any, *args: Any) -> Any:
    """Call a plugin's factory; an exception of its own (not a FlemmeError: a bug, not the user's
    mistake) or a ``sys.exit`` inside it is a one-line error naming the distribution
    (``error in plugin <distribution>: ...``; ``FLEMME_DEBUG=1`` keeps the traceback)."""
    from .errors import FlemmeError
    from .registry import CORE_PROVIDER_NAME

    try:
        return component.load()(*args)
    except FlemmeError:
        raise
    except Exception as exc:  # a plugin's own bug: one line naming its distribution
        from .commands import debug, plugin_error

        if component.provider.name == CORE_PROVIDER_NAME or debug():
            raise
        raise plugin_error(component.provider.name, exc) from exc
    except SystemExit as exc:
        raise PluginError(f"{component.kind} {component.name!r} from {component.provider} called sys.exit"
                          f"({exc.code!r}) while building; the plugin {component.provider.name} is broken: "
                          "upgrade it or report it to its authors") from None


def _encoder_builder(model: ModelConfig):
    def build(*, in_channels: int | None = None, image_size: list[int] | None = None,
              context_dim: int | None = None, encoder: EncoderConfig | None = None) -> Encoder:
        base = encoder or model.encoder
        cfg = dataclasses.replace(
            base, dims=model.dims,
            in_channels=in_channels if in_channels is not None else model.in_channels,
            image_size=list(image_size if image_size is not None else model.image_size),
            context_dim=context_dim if context_dim is not None else base.context_dim,
        )
        enc = build_encoder(cfg)
        if cfg.context_dim is not None and not enc.supports_context:
            raise ConfigError(f"architecture {model.arch!r} conditions every encoder block on a context vector, but "
                              f"encoder family {cfg.name!r} cannot inject one into its blocks (supports_context is "
                              f"False: a pretrained network runs as published); use a family that can, e.g. cnn")
        enc.check_image_size(cfg.image_size)
        return enc

    return build


def build_model(config: ModelConfig | Mapping[str, Any]) -> Architecture:
    """Build the configured architecture with the configured encoder family.

    An architecture registered with ``encoder=False`` (a whole network) is built with
    ``build_encoder=None`` and ``config.encoder`` set to ``None``; a config that names an
    encoder for it is refused in one line rather than silently ignored.
    """
    cfg = as_model_config(config)
    registry = get_registry()
    for item in cfg.loss or []:
        registry.get("loss", item["name"])  # fail on a misspelt loss before building anything
    component = registry.get("architecture", cfg.arch)
    if not takes_encoder(cfg.arch):
        if cfg.encoder is not None and cfg.encoder != EncoderConfig():
            raise ConfigError(f"architecture {cfg.arch!r} from {component.provider} takes no encoder (it is a whole "
                              f"network); remove model.encoder / --encoder and set its sizes in model.arch_options "
                              f"(e.g. --set arch_options.{component.metadata.get('widths', 'channels')}=...)")
        cfg = dataclasses.replace(cfg, encoder=None)
        model = _call_factory(component, cfg, None)
    else:
        if cfg.encoder is None:
            cfg = dataclasses.replace(cfg, encoder=EncoderConfig())
        if cfg.encoder.name is None:
            cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, name=default_encoder_name()))
        model = _call_factory(component, cfg, _encoder_builder(cfg))
    if not isinstance(model, Architecture):
        raise PluginError(f"architecture {cfg.arch!r} from {component.provider} returned {type(model).__name__}, "
                          f"not a flemme_core.architectures.base.Architecture; the factory of "
                          f"{component.provider.name} is broken: upgrade it or report it to its authors")
    return model


def takes_encoder(arch: str) -> bool:
    """Whether an architecture wraps an encoder family (registration metadata ``encoder``,
    default ``True``); ``False`` for whole networks such as flemme-monai's ``monai-unet``."""
    return bool(get_registry().get("architecture", arch).metadata.get("encoder", True))


def loss_spec(model: Architecture) -> list[dict[str, Any]]:
    """The losses a model trains with: the config's, else the architecture's default."""
    if model.config.loss is not None:
        return model.config.loss
    if model.default_loss is not None:
        return list(model.default_loss)
    from .tasks import task_of

    return [dict(item) for item in task_of(model).default_loss]


def used_components(model: Architecture) -> list[tuple[str, str]]:
    """(kind, name) of every registered component a model is built from: architecture, encoder,
    losses, and what they declare (``Architecture.extra_components``, ``Encoder.components``)."""
    cfg = model.config
    wanted = [("architecture", cfg.arch)] + ([("encoder", cfg.encoder.name)] if cfg.encoder is not None else [])
    wanted += [("loss", item["name"]) for item in loss_spec(model)]
    wanted += list(model.extra_components())
    wanted += list(getattr(model.encoder, "components", list)())
    return list(dict.fromkeys(wanted))


def components_of(model: Architecture) -> dict[str, str]:
    """kind:name -> 'distribution version', stored in checkpoints so a missing plugin can be named."""
    registry = get_registry()
    out = {}
    for kind, name in used_components(model):
        provider = registry.provider_of(kind, name)
        out[f"{kind}:{name}"] = str(provider) if provider else "?"
    return out


def versions_of(model: Architecture) -> dict[str, str]:
    """Distribution versions of the core and of every plugin the model's components come from."""
    registry = get_registry()
    core = registry.loaded_plugins()[0].provider
    out = {core.name: core.version}
    for kind, name in used_components(model):
        provider = registry.provider_of(kind, name)
        if provider is not None:
            out[provider.name] = provider.version
    return out


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


def macs_per_sample(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per sample of ``x``, in eval mode
    (``torch.utils.flop_counter`` counts 2 FLOPs per MAC in convolutions, transposed
    convolutions, matmuls and attention; custom kernels it does not know count 0)."""
    was_training = model.training
    model.eval()
    try:
        return _counted_forward(model, x)[1]
    finally:
        model.train(was_training)


def _counted_forward(model: torch.nn.Module, x: torch.Tensor) -> tuple[Any, int]:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(x)
    return out, int(counter.get_total_flops() // 2 // x.shape[0])


def summarize(model: Architecture, batch_size: int = 1) -> dict[str, Any]:
    """Run one forward pass on a dummy batch and describe shapes, levels, sizes and cost.

    A model without an encoder (an architecture registered with ``encoder=False``) has no
    levels here; its ``summary_extra`` says what it is (e.g. the MONAI network and its options).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    captured: dict[str, Any] = {}

    def grab(_module, _inputs, output):
        captured.setdefault("features", output)

    enc = model.encoder
    handle = enc.register_forward_hook(grab) if enc is not None else None
    was_training = model.training
    model.eval()
    try:
        x = model.example_input(batch_size)
        out, macs = _counted_forward(model, x)
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    outs = out if isinstance(out, (list, tuple)) else [out]
    features = captured.get("features") or []
    total, trainable = count_parameters(model)
    cfg = model.config
    levels = [] if enc is None else [
        {"level": i, "channels": c, "stride": s, "shape": list(features[i].shape) if i < len(features) else None}
        for i, (c, s) in enumerate(zip(enc.feature_channels, enc.feature_strides))]
    return {
        "arch": cfg.arch,
        "encoder": cfg.encoder.name if cfg.encoder is not None else None,
        "dims": cfg.dims,
        "backend": getattr(enc, "backend", "") or "torch",
        "parameters": total,
        "trainable_parameters": trainable,
        "encoder_parameters": count_parameters(enc)[0] if enc is not None else 0,
        "macs_per_sample": macs,
        "input_shape": list(x.shape),
        "output_shapes": [list(o.shape) for o in outs],
        "levels": levels,
        "total_stride": enc.total_stride if enc is not None else None,
        "config": cfg.to_dict(),
        "resolved_encoder": ({k: getattr(enc.config, k) for k in EncoderConfig.USER_KEYS + ("options",)}
                             if enc is not None else None),
        "versions": versions_of(model),
        **model.summary_extra(),
    }
