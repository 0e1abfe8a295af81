"""The ``clip`` family: a CLIP vision tower (OpenAI CLIP, PLIP, ...) run by transformers.

Output: the last hidden state's patch tokens (CLS dropped) as a map ``[hidden, H/p, W/p]``
(MMFD's PLIP branch, CLIP ViT-B/32: [768, 16²] at 512 input), one level; ``pyramid`` adds more.

Weights: a Hugging Face folder as published (``config.json`` of a ``clip`` or
``clip_vision_model``; ``model.safetensors`` or ``pytorch_model.bin``, sharded or not;
``preprocessor_config.json`` for the normalisation if present), read locally only: the
config by hand, safetensors as is, ``.bin`` through ``torch.load(weights_only=True)``. The
vision tower's keys (``vision_model.*`` in the files) must all be filled and none left over
(the text tower's keys, and ``position_ids`` that old transformers saved, are not the encoder's).
For an input size other than the config's ``image_size`` (224), the position table is
interpolated (bicubic) by transformers' ``interpolate_pos_encoding``, as MMFD does for PLIP.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from flemme_core.config import EncoderConfig
from flemme_core.errors import CheckpointError, ConfigError, unknown_name_message
from flemme_core.weights import adapt_input_weight, load_into, read_weights

from .pretrained import PretrainedEncoder, PretrainedOptions

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PATCH_KEY = "embeddings.patch_embedding.weight"


@dataclasses.dataclass
class ClipOptions(PretrainedOptions):
    config: dict[str, Any] | None = None  # CLIPVisionConfig fields (read from weights/config.json when given)


def read_folder_config(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vision config dict, preprocessor dict) of a local Hugging Face CLIP folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{str(folder)!r} has no config.json; give a Hugging Face CLIP folder (config.json + "
                              f"model.safetensors or pytorch_model.bin)")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from None
    kind = data.get("model_type")
    if kind == "clip" or "vision_config" in data:
        data = data.get("vision_config") or {}
    elif kind not in (None, "clip_vision_model"):
        raise CheckpointError(f"{str(path)!r} describes a {kind!r} model, not CLIP; give a CLIP (or PLIP) folder")
    pre = folder / "preprocessor_config.json"
    try:
        preprocessor = json.loads(pre.read_text()) if pre.is_file() else {}
    except ValueError:
        preprocessor = {}
    return {k: v for k, v in data.items() if k not in ("model_type", "transformers_version", "architectures")}, \
        preprocessor


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files: an index's shards, else the single safetensors/bin file."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index).is_file():
            shards = json.loads((folder / index).read_text()).get("weight_map", {}).values()
            return [folder / name for name in sorted(set(shards))]
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"{str(folder)!r} has no model.safetensors or pytorch_model.bin; give a Hugging Face "
                          f"CLIP folder (nothing is downloaded)")


def vision_state(state: dict[str, torch.Tensor], ignore: list[str], prefixed: bool) -> dict[str, torch.Tensor]:
    """The vision tower's keys named as the module names them: files (a CLIPModel's or a
    CLIPVisionModel's) prefix them ``vision_model.``; transformers 5's CLIPVisionModel does not."""
    if any(k.startswith("vision_model.") for k in state):
        state = {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    state = {k: v for k, v in state.items() if not any(re.search(p, k) for p in ignore)}
    if PATCH_KEY not in state:  # not a vision tower: keep the keys as they are for the report
        return state
    return {f"vision_model.{k}" if prefixed else k: v for k, v in state.items()}


class ClipEncoder(PretrainedEncoder):
    """See the module docstring."""

    Options = ClipOptions

    def build_backbone(self, cfg: EncoderConfig, opts: ClipOptions):  # type: ignore[override]
        if cfg.drop_path:
            raise ConfigError("model.encoder.drop_path: transformers' CLIP vision tower has no stochastic depth; "
                              "leave drop_path unset (dropout drops its output features)")
        from transformers import CLIPVisionConfig, CLIPVisionModel

        given, preprocessor, state = dict(opts.config or {}), {}, None
        if opts.weights:
            folder = Path(opts.weights)
            if not folder.is_dir():
                raise CheckpointError(f"clip weights {opts.weights!r} must be a Hugging Face folder (config.json + "
                                      f"weights), e.g. the PLIP folder; it is not a folder")
            read, preprocessor = read_folder_config(folder)
            given = {**read, **given}
        known = set(CLIPVisionConfig().to_dict())
        for key in given:
            if key not in known:
                raise ConfigError(unknown_name_message("key in model.encoder.config:", key, sorted(known)))
        config = CLIPVisionConfig(**{**given, "num_channels": cfg.in_channels})
        self.vision_config = {k: v for k, v in config.to_diff_dict().items() if k in known and k != "num_channels"}
        model = CLIPVisionModel(config)
        if opts.weights:
            ignore = list(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []) + [r"position_ids$"]
            merged: dict[str, torch.Tensor] = {}
            for file in weight_files(Path(opts.weights)):
                merged.update(read_weights(file))
            prefixed = any(k.startswith("vision_model.") for k in model.state_dict())
            state = vision_state(merged, ignore, prefixed)
            patch_key = f"vision_model.{PATCH_KEY}" if prefixed else PATCH_KEY
            if patch_key in state:
                state[patch_key] = adapt_input_weight(state[patch_key], cfg.in_channels)
            load_into(model, state, f"{opts.weights!r} as a CLIP vision tower",
                      hint="give a CLIP/PLIP Hugging Face folder whose config.json matches its weights")
        # The pooled output's norm is loaded (it is in every CLIP file) but the patch tokens never use it:
        # no gradient, so trainers and DDP see no unused trainable parameters.
        for p in model.vision_model.post_layernorm.parameters() if hasattr(model, "vision_model") \
                else model.post_layernorm.parameters():
            p.requires_grad_(False)
        self.mean_std = (list(preprocessor.get("image_mean") or OPENAI_MEAN), list(preprocessor.get("image_std") or OPENAI_STD))
        patch = int(config.patch_size)
        self.native_size = int(config.image_size)
        for s in cfg.image_size:
            if s % patch:
                raise ConfigError(f"image size {s} must be a multiple of CLIP's patch size {patch}; use "
                                  f"--image-size {max(patch, round(s / patch) * patch)}")
        import transformers

        self.backend = f"transformers {transformers.__version__}: CLIPVisionModel (patch {patch}, native {self.native_size})"
        return model, [int(config.hidden_size)], [patch], self.mean_std

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2] // self.feature_strides_native, x.shape[-1] // self.feature_strides_native
        resize = tuple(x.shape[-2:]) != (self.native_size, self.native_size)
        tokens = self.backbone(pixel_values=x, interpolate_pos_encoding=resize).last_hidden_state[:, 1:]
        return [tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)]

    @property
    def feature_strides_native(self) -> int:
        return int(self.backbone.config.patch_size)

    def structure_options(self) -> dict[str, Any]:
        mean, std = self.mean_std
        return {"config": self.vision_config, "mean": self.options.mean or mean, "std": self.options.std or std}


def encoder(cfg: EncoderConfig) -> ClipEncoder:
    return ClipEncoder(cfg)
