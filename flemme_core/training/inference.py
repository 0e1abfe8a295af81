"""``flemme eval`` and ``flemme predict``: a checkpoint alone is enough.

Checkpoints written by the trainer carry, in their metadata, the data config, the
patch (sliding-window) size, the task, the class names and how training normalised
intensities, so evaluation rebuilds the same held-out split and prediction reads a
raw image the way training saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ShapeError
from .evaluation import EvalSettings, evaluate, infer
from .metrics import TASK_METRICS, labels_from_logits
from .profiling import count_parameters, cpu_latency_ms
from .setup import pick_device

NORMALIZERS = ("auto", "zscore", "zscore-nonzero", "percentile", "none")


def _load(checkpoint: str | Path, device: str) -> tuple[Any, dict[str, Any], torch.device]:
    from ..checkpoint import load_model

    dev = pick_device(device)
    model = load_model(checkpoint, map_location="cpu").to(dev).eval()
    extra = model.checkpoint_metadata.get("extra", {})
    return model, extra, dev


def _settings(model: Any, extra: dict[str, Any], device: torch.device, num_classes: int | None = None,
              class_names: Sequence[str] = (), spacing: Sequence[float] | None = None) -> EvalSettings:
    cfg = model.config
    sw = extra.get("sw", {})
    return EvalSettings(task=model.task, metrics=list(TASK_METRICS.get(model.task, ())),
                        roi_size=list(extra.get("roi_size") or cfg.image_size),
                        sw_batch_size=int(sw.get("sw_batch_size", 4)), overlap=float(sw.get("overlap", 0.25)),
                        sw_mode=sw.get("mode", "gaussian"),
                        num_classes=max(2, num_classes or cfg.out_channels),
                        class_names=list(class_names or extra.get("class_names") or []),
                        spacing=spacing or extra.get("spacing") or None, device=device)


def evaluate_checkpoint(checkpoint: str | Path, data: dict[str, Any] | None = None, sets: Sequence[str] = (),
                        device: str = "auto", per_item: bool = False, variants: bool = True,
                        threads: int | None = 1, repeats: int = 10) -> dict[str, Any]:
    """Metrics of a checkpoint on its run's held-out split, or on ``data`` (a data source).

    With ``variants`` the architecture's :meth:`evaluation_variants` (teacher, student) are
    evaluated too, each with its parameters and CPU milliseconds per batch-1 forward at the
    patch size (``threads`` CPU threads, median of ``repeats``)."""
    from ..config import set_dotted
    from ..data import build_datasets
    from .config import parse_set_value

    model, extra, dev = _load(checkpoint, device)
    data_cfg = dict(extra.get("data") or {})
    if data:
        for key in ("preset", "datalist", "images", "labels", "options", "base_dir"):
            data_cfg.pop(key, None)
        data_cfg.update(data)
    if not data_cfg:
        raise ConfigError(f"{checkpoint} does not say which data it was trained on; pass --data")
    sw_sets = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. data.num_classes=3), got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        if key.startswith("data."):
            set_dotted(data_cfg, key[len("data."):], parse_set_value(value))
        elif key in ("train.sw_batch_size", "train.overlap"):
            sw_sets[key.split(".")[1]] = parse_set_value(value)
        else:
            raise ConfigError(f"flemme eval --set takes data.* keys, train.sw_batch_size or train.overlap; got {key!r}")
    data_cfg["cache"] = False
    train_ds, val_ds, info = build_datasets(data_cfg, seed=int(extra.get("seed", 0)))
    if info.task == "segmentation" and model.task == "segmentation":
        out = model.config.out_channels
        if not (out == info.num_classes or (out == 1 and info.num_classes == 2)):
            raise ConfigError(f"the model predicts {out} classes but the data has {info.num_classes}; "
                              "evaluate on data with the same classes")
    settings = _settings(model, extra, dev, info.num_classes, info.class_names, info.spacing)
    settings.sw_batch_size = int(sw_sets.get("sw_batch_size", settings.sw_batch_size))
    settings.overlap = float(sw_sets.get("overlap", settings.overlap))
    metrics, extras = _metrics(model, val_ds, train_ds, settings, per_item)
    result = {"checkpoint": str(checkpoint), "data": info.name, "held_out": info.held_out_description,
              "task": model.task, "num_items": len(val_ds), "parameters": count_parameters(model),
              "metrics": metrics}
    if per_item:
        result["per_item"] = extras.get("per_item", [])
    if variants and model.evaluation_variants():
        example = torch.randn(1, model.config.in_channels, *settings.roi_size)
        result["variants"] = {
            name: {"parameters": count_parameters(sub),
                   "cpu_ms": cpu_latency_ms(sub, example, repeats=repeats, threads=threads),
                   "metrics": _metrics(sub, val_ds, train_ds, settings, False)[0]}
            for name, sub in model.evaluation_variants().items()}
        result["timing"] = {"device": "cpu", "threads": threads or torch.get_num_threads(), "repeats": repeats,
                            "input": list(example.shape)}
    return result


def _metrics(model: Any, val_ds: Any, train_ds: Any, settings: EvalSettings,
             per_item: bool) -> tuple[dict[str, float], dict[str, Any]]:
    whole = model.dataset_metrics(val_ds, train_ds)  # generative models: sample quality + controls
    if whole is not None:
        return whole, {}
    return evaluate(model, val_ds, settings, per_item=per_item, keep_example=False)


def normalize_image(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Intensity normalisation of a (C, *S) image as training applied it."""
    name = spec.get("name", "none")
    x = x.astype(np.float32)
    if name == "none":
        return x
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        ch = x[c]
        if name == "zscore-nonzero":  # statistics of the non-zero voxels, applied everywhere
            inside = ch[ch != 0] if np.any(ch != 0) else ch.ravel()
            out[c] = (ch - inside.mean()) / max(float(inside.std()), 1e-8)
        elif name == "zscore":
            from monai.transforms import NormalizeIntensity

            out[c] = np.asarray(NormalizeIntensity(nonzero=bool(spec.get("nonzero", False)))(ch))
        elif name == "percentile":
            lo, hi = np.percentile(ch, [float(spec.get("lower", 1.0)), float(spec.get("upper", 99.8))])
            out[c] = (ch - lo) / max(float(hi - lo), 1e-8)
            if spec.get("clip"):
                out[c] = np.clip(out[c], 0.0, 1.0)
        else:
            raise ConfigError(f"unknown normalisation {name!r}; use one of {', '.join(NORMALIZERS)}")
    return out


def _normalize_spec(option: str, extra: dict[str, Any]) -> dict[str, Any]:
    if option not in NORMALIZERS:
        from ..errors import unknown_name_message

        raise ConfigError(unknown_name_message("--normalize value", option, NORMALIZERS))
    if option == "auto":
        return dict(extra.get("normalize") or {"name": "none"})
    return {"name": option}


def predict_files(checkpoint: str | Path, inputs: Sequence[str | Path], output: str | Path,
                  normalize: str = "auto", device: str = "auto") -> list[tuple[Path, Path]]:
    """Predict every input image; returns (input, written file) pairs."""
    from ..data import output_path_for, read_image, write_prediction

    model, extra, dev = _load(checkpoint, device)
    settings = _settings(model, extra, dev)
    spec = _normalize_spec(normalize, extra)
    output = Path(output)
    single_file = len(inputs) == 1 and output.name.lower().endswith((".nii", ".nii.gz", ".png", ".jpg", ".jpeg"))
    written = []
    for src in inputs:
        img = read_image(src)
        cfg = model.config
        if img.array.ndim - 1 != cfg.dims:
            raise ShapeError(f"{src} is a {img.array.ndim - 1}D image but the model is {cfg.dims}D; "
                             f"use a {cfg.dims}D image")
        if img.array.shape[0] != cfg.in_channels:
            raise ShapeError(f"{src} has {img.array.shape[0]} channel(s) but the model takes {cfg.in_channels}; "
                             "convert the image (e.g. to grayscale)")
        x = torch.from_numpy(normalize_image(img.array, spec))[None]
        out = infer(model, x, settings)
        pred = labels_from_logits(out)[0].to(torch.int64) if model.task == "segmentation" else out[0]
        dst = output if single_file else output_path_for(src, output)
        written.append((Path(src), write_prediction(pred.cpu().numpy(), dst, like=img)))
    return written

