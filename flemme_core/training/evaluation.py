"""Held-out evaluation: whole-image inference (sliding window when larger than the patch)
and the task's metrics, or the architecture's own, reduced over processes.

Used by the trainer's periodic validation, by ``flemme eval`` and by ``flemme predict``
(:func:`infer`), so every number comes out of the same code path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..tasks import Task
from .distributed import DistContext, gather_objects
from .metrics import OwnMetrics
from .sampling import collate


@dataclass
class EvalSettings:
    """How to run inference and what to measure (``task``: the model's :class:`~flemme_core.tasks.Task`)."""

    task: Task
    metrics: list[str]
    roi_size: list[int]
    sw_batch_size: int = 4
    overlap: float = 0.25
    sw_mode: str = "gaussian"
    num_classes: int = 2
    class_names: list[str] = field(default_factory=list)
    spacing: Sequence[float] | None = None
    amp_dtype: torch.dtype | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 1


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def infer(model: torch.nn.Module, x: torch.Tensor, settings: EvalSettings) -> torch.Tensor:
    """The model's full-resolution output for a whole image; sliding windows of ``roi_size``
    (Gaussian-blended) when the image is not exactly the patch size."""
    x = x.to(settings.device)
    with autocast(settings.device, settings.amp_dtype):
        if list(x.shape[2:]) == list(settings.roi_size):
            out = model.predict(x)
        else:
            from monai.inferers import sliding_window_inference

            out = sliding_window_inference(x, settings.roi_size, settings.sw_batch_size, model.predict,
                                           overlap=settings.overlap, mode=settings.sw_mode)
    if hasattr(out, "as_tensor"):
        out = out.as_tensor()
    return out.float()


def _example(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, task: Task) -> dict[str, np.ndarray]:
    """One 2D view of the first item (the 3D slice with most foreground) for the overlay PNG."""
    image = x[0, 0].float().cpu().numpy()
    target = y[0, 0].cpu().numpy()
    pred = task.prediction(out)[0, 0].float().cpu().numpy()
    if image.ndim == 3:
        score = (target > 0).sum(axis=(0, 1)) if task.labels else np.abs(target).sum(axis=(0, 1))
        z = int(np.argmax(score))
        image, target, pred = image[..., z], target[..., z], pred[..., z]
    return {"image": image, "label": target, "prediction": pred}


def evaluate(model: Any, dataset: Sequence[Any], settings: EvalSettings, ctx: DistContext | None = None,
             keep_example: bool = True, per_item: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics over the held-out ``dataset`` (items sharded over processes) and, on rank 0,
    an example view. ``dataset[i]`` gives a whole ``{"image", "label"}`` item.

    Returns ``(metrics, extras)``; ``extras`` may hold ``example`` (for the overlay) and
    ``per_item`` (metrics of each item, when asked).
    """
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    mine = list(range(ctx.rank, len(dataset), ctx.world_size))
    own = OwnMetrics()
    standard = settings.task.metric_accumulator(settings)
    extras: dict[str, Any] = {}
    rows: list[dict[str, float]] = []
    use_own: bool | None = None
    try:
        for start in range(0, len(mine), settings.batch_size):
            batch = collate([dataset[i] for i in mine[start : start + settings.batch_size]])
            batch = {k: v.to(settings.device) for k, v in batch.items()}
            if use_own is None or use_own:
                with torch.no_grad(), autocast(settings.device, settings.amp_dtype):
                    values = model.validation_metrics(batch)
                use_own = values is not None
                if use_own:
                    own.update_dict(values)
                    rows.append({**item_ids(dataset, mine[start : start + settings.batch_size]), **values})
                    continue
            x, y = model.inputs_and_target(batch)
            out = infer(model, x, settings)
            if per_item:
                single = settings.task.metric_accumulator(settings)
                single.update(out, y)
                rows.append({**item_ids(dataset, mine[start : start + settings.batch_size]), **single.result()})
            standard.update(out, y)
            if keep_example and "example" not in extras and ctx.is_main:
                extras["example"] = _example(x, y, out, settings.task)
    finally:
        model.train(was_training)
    # every rank contributes (kind, sums, counts); a rank without items follows the others
    local = own.sums if use_own else standard.sums
    parts = gather_objects((bool(use_own), local.sums, local.counts), ctx)
    use_own = any(p[0] for p in parts)  # type: ignore[index]
    (own.sums if use_own else standard.sums).merge([(p[1], p[2]) for p in parts])  # type: ignore[index]
    result = own.result() if use_own else standard.result()
    if per_item:
        extras["per_item"] = rows
    return result, extras


def item_ids(dataset: Sequence[Any], indices: Sequence[int]) -> dict[str, Any]:
    """Which held-out item(s) a per-item row is about: the index in the held-out split and, for
    file sources, the image file (``item``/``image``; lists when a row covers a batch)."""
    raw = getattr(dataset, "data", None)
    files = [raw[i].get("image") if raw is not None and isinstance(raw[i], dict) else None for i in indices]
    one = len(indices) == 1
    out: dict[str, Any] = {"item": indices[0] if one else list(indices)}
    if all(isinstance(f, str) for f in files):
        out["image"] = files[0] if one else files
    return out

