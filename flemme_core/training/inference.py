"""``flemme eval`` and ``flemme predict``: a checkpoint alone is enough.

Checkpoints written by the trainer carry, in their metadata, the data config, the
patch (sliding-window) size, the task, the class names and how training normalised
intensities, so evaluation rebuilds the same held-out split and prediction reads a
raw image the way training saw it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ShapeError, unknown_name_message
from ..tasks import get_task, task_of
from .evaluation import EvalSettings, evaluate, infer
from .profiling import count_parameters, cpu_latency_ms
from .setup import pick_device

NORMALIZERS = ("auto", "zscore", "percentile", "none")


def _load(checkpoint: str | Path, device: str) -> tuple[Any, dict[str, Any], torch.device]:
    from ..checkpoint import load_model
    from ..export import is_exported

    dev = pick_device(device)
    if is_exported(checkpoint):  # .onnx (ONNX Runtime), .pt2, .ts: a predictor with the checkpoint's metadata
        from ..export.runtime import ExportedModel

        model = ExportedModel(checkpoint, dev)
    else:
        model = load_model(checkpoint, map_location="cpu").to(dev).eval()
    extra = model.checkpoint_metadata.get("extra", {})
    return model, extra, dev


def variant_of(model: Any, name: str | None) -> Any:
    """The sub-model ``name`` of ``model.evaluation_variants()`` (e.g. a distillation run's
    ``teacher``), or the model itself for None; an unknown name is one line."""
    if name is None:
        return model
    variants = model.evaluation_variants() if hasattr(model, "evaluation_variants") else {}
    if name not in variants:
        raise ConfigError(unknown_name_message(f"evaluation variant of architecture {model.config.arch!r}:", name,
                                               variants, "the architecture's evaluation_variants() names them"))
    return variants[name]


def _settings(model: Any, extra: dict[str, Any], device: torch.device, num_classes: int | None = None,
              class_names: Sequence[str] = (), spacing: Sequence[float] | None = None) -> EvalSettings:
    cfg = model.config
    sw = extra.get("sw", {})
    task = task_of(model)
    return EvalSettings(task=task, metrics=task.check_metric_names(None),
                        roi_size=list(extra.get("roi_size") or cfg.image_size),
                        sw_batch_size=int(sw.get("sw_batch_size", 4)), overlap=float(sw.get("overlap", 0.25)),
                        sw_mode=sw.get("mode", "gaussian"),
                        num_classes=max(2, num_classes or cfg.out_channels),
                        class_names=list(class_names or extra.get("class_names") or []),
                        spacing=spacing or extra.get("spacing") or None, device=device)


def evaluate_checkpoint(checkpoint: str | Path, data: dict[str, Any] | None = None, sets: Sequence[str] = (),
                        device: str = "auto", per_item: bool = False, variants: bool = True,
                        threads: int | None = 1, repeats: int = 10, variant: str | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint on its run's held-out split, or on ``data`` (a data source);
    with ``variant``, of that one of its :meth:`evaluation_variants` instead (:func:`variant_of`).

    With ``variants`` the architecture's :meth:`evaluation_variants` (teacher, student) are
    evaluated too, each with its parameters and CPU milliseconds per batch-1 forward at the
    patch size (``threads`` CPU threads, median of ``repeats``)."""
    from ..config import set_dotted
    from ..data import build_datasets
    from ..overrides import parse_set

    model, extra, dev = _load(checkpoint, device)
    model = variant_of(model, variant)
    data_cfg = dict(extra.get("data") or {})
    if data:
        for key in ("preset", "datalist", "images", "labels", "options", "base_dir"):
            data_cfg.pop(key, None)
        data_cfg.update(data)
    if not data_cfg:
        raise ConfigError(f"{checkpoint} does not say which data it was trained on; pass --data")
    sw_sets = {}
    for item in sets:
        key, value = parse_set(item, "data.num_classes=3")
        if key.startswith("data."):
            set_dotted(data_cfg, key[len("data."):], value)
        elif key in ("train.sw_batch_size", "train.overlap"):
            sw_sets[key.split(".")[1]] = value
        else:
            raise ConfigError(f"flemme eval --set takes data.* keys, train.sw_batch_size or train.overlap; got {key!r}")
    data_cfg["cache"] = False
    train_ds, val_ds, info = build_datasets(data_cfg, seed=int(extra.get("seed", 0)))
    if get_task(info.task).labels and task_of(model).labels:
        out = model.config.out_channels
        if not (out == info.num_classes or (out == 1 and info.num_classes == 2)):
            raise ConfigError(f"the model predicts {out} classes but the data has {info.num_classes}; "
                              "evaluate on data with the same classes")
    settings = _settings(model, extra, dev, info.num_classes, info.class_names, info.spacing)
    settings.task.check_metric_requirements(settings.metrics)
    if sw_sets:
        from .config import train_config_from_dict

        checked = train_config_from_dict(sw_sets)  # the train: section's own checks: one line per bad value
        settings.sw_batch_size = checked.sw_batch_size if "sw_batch_size" in sw_sets else settings.sw_batch_size
        settings.overlap = checked.overlap if "overlap" in sw_sets else settings.overlap
    metrics, extras = _metrics(model, val_ds, train_ds, settings, per_item)
    result = {"checkpoint": str(checkpoint), "data": info.name, "held_out": info.held_out_description,
              "task": task_of(model).name, "num_items": len(val_ds), "parameters": count_parameters(model),
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


def _preprocessing(option: str, extra: dict[str, Any], image: np.ndarray) -> list[dict[str, Any]]:
    """The steps ``predict`` applies: the checkpoint's recorded preprocessing (``auto``), or its
    geometric steps with the intensity step ``option`` instead."""
    from ..data.preprocessing import GEOMETRIC, check_steps, linear

    if option not in NORMALIZERS:
        from ..errors import unknown_name_message

        raise ConfigError(unknown_name_message("--normalize value", option, NORMALIZERS))
    if "preprocessing" in extra:
        recorded = check_steps(extra["preprocessing"], "the checkpoint's preprocessing")
    else:  # checkpoints written before the preprocessing was recorded: their one normalisation entry
        legacy = dict(extra.get("normalize") or {"name": "none"})
        if legacy["name"] == "zscore-nonzero":  # statistics of this image's non-zero voxels, applied everywhere
            inside = image[image != 0] if np.any(image != 0) else image.ravel()
            legacy = linear(float(inside.mean()), max(float(inside.std()), 1e-8))
        recorded = [] if legacy["name"] == "none" else check_steps([legacy], "the checkpoint's normalize entry")
    if option == "auto":
        return recorded
    geometric = [s for s in recorded if s["name"] in GEOMETRIC]
    return geometric + ([] if option == "none" else [{"name": option}])


def predict_image(model: Any, img: Any, steps: list[dict[str, Any]], settings: EvalSettings) -> torch.Tensor:
    """The model's output on the grid of ``img`` (an :class:`~flemme_core.data.io.ImageFile`): the
    recorded steps are applied (orientation/spacing resample the input, and the output is
    resampled back with MONAI's inverse), then sliding-window inference. Returns ``(C, *S)``."""
    from ..data.preprocessing import apply_intensity, geometric

    geo = geometric(steps)
    if geo is None:
        x = torch.from_numpy(apply_intensity(img.array, steps))[None]
        return infer(model, x, settings)[0].cpu()
    from monai.data import MetaTensor

    moved = geo(MetaTensor(torch.from_numpy(img.array), affine=torch.as_tensor(img.affine)))
    x = torch.from_numpy(apply_intensity(np.asarray(moved), steps))[None]
    out = infer(model, x, settings)[0].cpu()
    back = geo.inverse(MetaTensor(out, affine=moved.affine, applied_operations=list(moved.applied_operations)))
    return torch.as_tensor(np.asarray(back))


def predict_files(checkpoint: str | Path, inputs: Sequence[str | Path], output: str | Path,
                  normalize: str = "auto", device: str = "auto",
                  log: Callable[[str], None] | None = None) -> list[tuple[Path, Path]]:
    """Predict every input image with the checkpoint's recorded preprocessing; returns
    (input, written file) pairs. ``log`` receives what was applied (once)."""
    from ..data import output_path_for, read_image, write_prediction
    from ..data.preprocessing import describe

    model, extra, dev = _load(checkpoint, device)
    settings = _settings(model, extra, dev)
    task = settings.task
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
        from ..data.checks import check_finite

        check_finite(img.array, str(src))  # NaN voxels would give a silent all-background prediction
        steps = _preprocessing(normalize, extra, img.array)
        if log is not None and not written:
            log(f"preprocessing ({'recorded in the checkpoint' if normalize == 'auto' else '--normalize'}): "
                f"{describe(steps)}")
        out = predict_image(model, img, steps, settings)[None]
        pred = task.prediction(out)[0]
        pred = pred.to(torch.int64) if task.labels else pred
        dst = output if single_file else output_path_for(src, output)
        written.append((Path(src), write_prediction(pred.cpu().numpy(), dst, like=img)))
        if log is not None and task.labels and str(dst).lower().endswith(".png") and len(written) == 1:
            log("PNG label maps are palette images: pixel values are the class indices (0 = background), "
                "which viewers show in distinct colours")
    return written
