"""The ``timm`` family: any timm model's ``features_only`` pyramid as a flemme encoder.

Weights come from a local file in timm's own format (the state dict of
``timm.create_model(name)``, as timm's hub files and ``model.state_dict()`` give it, head
included or not), read as safetensors or through ``torch.load(weights_only=True)``; never
downloaded. Keys are checked against the named model before anything is loaded (zero
missing, zero unexpected, or one line naming the first ones), then timm itself loads them
(``pretrained_cfg_overlay=dict(state_dict=...)``): its filters resize position embeddings to
``image_size`` and its ``adapt_input_conv`` sums the RGB filters for 1-channel input.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from flemme_core.config import EncoderConfig
from flemme_core.errors import CheckpointError, ConfigError, close_matches
from flemme_core.weights import read_weights

from .mobile_sam import is_mobile_sam
from .pretrained import PretrainedEncoder, PretrainedOptions
from .timm_import import import_timm


@dataclasses.dataclass
class TimmOptions(PretrainedOptions):
    model: str = "resnet34"                  # any timm model name (timm.list_models())
    out_indices: list[int] | None = None     # which feature levels (timm's out_indices); null: all
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra create_model arguments


def check_model_name(timm: Any, name: str) -> None:
    """An unknown model is one line with the close timm names."""
    if not isinstance(name, str) or not timm.is_model(name):
        names = timm.list_models()
        close = close_matches(str(name), names, n=5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown timm model {name!r}{hint} (timm {timm.__version__} has {len(names)} models: "
                          f"timm.list_models('{str(name)[:4]}*') lists them)")


def expected_keys(timm: Any, name: str, model_args: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(every key of the model as timm builds it, its classifier's keys), without allocating."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **model_args)
    except Exception:  # noqa: BLE001 - a model whose __init__ needs real tensors
        model = timm.create_model(name, pretrained=False, **model_args)
    keys = set(model.state_dict())
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return keys, {k for k in keys if any(k.startswith(h + ".") for h in heads)}


class TimmEncoder(PretrainedEncoder):
    """See the module docstring."""

    Options = TimmOptions

    def build_backbone(self, cfg: EncoderConfig, opts: TimmOptions):  # type: ignore[override]
        timm = import_timm()
        check_model_name(timm, opts.model)
        args = dict(opts.model_args)
        pretrained_cfg = timm.models.get_pretrained_cfg(opts.model)
        if pretrained_cfg is not None and pretrained_cfg.fixed_input_size and "img_size" not in args:
            args["img_size"] = tuple(cfg.image_size)  # ViTs: their grid (and position table) at our size
        kwargs: dict[str, Any] = {"features_only": True, "in_chans": cfg.in_channels, **args}
        if opts.out_indices is not None:
            kwargs["out_indices"] = tuple(opts.out_indices)
        if cfg.drop_path:
            kwargs["drop_path_rate"] = cfg.drop_path  # the model's own stochastic depth (TypeError if it has none)
        if opts.weights:
            state = read_weights(opts.weights)
            if is_mobile_sam(state):  # same shapes as tiny_vit_5m_224, other names, stride and a neck
                raise CheckpointError(f"{opts.weights!r} is MobileSAM's (original TinyViT layout, not timm's): use "
                                      f"--encoder sam --set encoder.variant=vit_t (MobileSAM's image encoder, its neck "
                                      f"and stride 16)")
            native = dict(opts.model_args)  # the file is the model at its own size (no img_size of ours)
            keys, heads = expected_keys(timm, opts.model, native)
            missing = sorted(keys - set(state) - heads)
            unexpected = sorted(set(state) - keys)
            if missing or unexpected:
                few = lambda ks: ", ".join(ks[:3]) + (" ..." if len(ks) > 3 else "")
                parts = ([f"{len(missing)} missing ({few(missing)})"] if missing else []) + (
                    [f"{len(unexpected)} unexpected ({few(unexpected)})"] if unexpected else [])
                raise CheckpointError(f"weights {opts.weights!r} are not timm's {opts.model!r}: {'; '.join(parts)}; "
                                      f"give the state dict of timm.create_model({opts.model!r}) or fix encoder.model")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"state_dict": state})
        try:
            model = _quiet(timm.create_model, opts.model, **kwargs)
        except RuntimeError as exc:  # shapes that do not fit (load_state_dict lists them over many lines)
            lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln] or [str(exc).splitlines()[0]]
            raise CheckpointError(f"weights {opts.weights!r} do not fit timm's {opts.model!r}: {lines[0][:200]}"
                                  f"{f' (+{len(lines) - 1} more)' if len(lines) > 1 else ''}") from None
        except (TypeError, AssertionError) as exc:
            raise ConfigError(f"timm model {opts.model!r} cannot be built with {kwargs | {'pretrained_cfg_overlay': '...'}}"
                              f": {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self.timm_model = opts.model
        self.backend = f"timm {timm.__version__}: {opts.model}"
        info = model.feature_info
        mean = model.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
        std = model.pretrained_cfg.get("std", (0.229, 0.224, 0.225))
        return model, list(info.channels()), list(info.reduction()), (mean, std)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(x))


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """timm logs each pretrained load at INFO level; a build should print nothing."""
    import logging

    logger = logging.getLogger("timm")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        return fn(*args, **kwargs)
    finally:
        logger.setLevel(level)


def encoder(cfg: EncoderConfig) -> TimmEncoder:
    return TimmEncoder(cfg)
