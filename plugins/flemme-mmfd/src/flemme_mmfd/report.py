"""``distill-report``: teacher vs student of a distillation checkpoint, measured the same way.

For each model: parameters, CPU inference time (median of repeated batch-1 forward
passes at the model's image size, after warm-up, with a fixed number of threads) and
foreground Dice on a dataset preset's held-out items (sliding-window inference at the
model's image size, argmax; intersections and sizes summed over items and foreground
classes). The same :func:`measure` serves the benchmark for single-branch baselines.

``flemme eval CHECKPOINT`` prints the same comparison through the generic
``Architecture.evaluation_variants`` (on the checkpoint's own held-out split, with every
metric); this module adds single-branch baselines for the benchmark, the Dice summed over
foreground classes, and the subcommand ``flemme distill-report CHECKPOINT --data PRESET`` (registered
through ``register_commands``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
import torch

from flemme_core.errors import ConfigError
from flemme_core.training.profiling import count_parameters, cpu_latency_ms


def held_out_dice(model: torch.nn.Module, items: Sequence[dict[str, Any]], roi_size: Sequence[int],
                  num_classes: int, overlap: float = 0.25) -> float:
    """Foreground Dice over all held-out items (global counts), sliding-window argmax predictions."""
    from monai.inferers import sliding_window_inference

    model = model.cpu().eval()
    inter = size = 0.0
    with torch.inference_mode():
        for item in items:
            x = torch.as_tensor(item["image"], dtype=torch.float32)[None]
            y = torch.as_tensor(item["label"]).long()[None]
            logits = sliding_window_inference(x, list(roi_size), 4, model.predict, overlap=overlap, mode="gaussian")
            pred = logits.argmax(1, keepdim=True) if logits.shape[1] > 1 else (logits > 0).long()
            for c in range(1, max(num_classes, 2)):
                p, g = pred == c, y == c
                inter += float((p & g).sum())
                size += float(p.sum() + g.sum())
    return 2 * inter / size if size else 1.0


def measure(model: torch.nn.Module, items: Sequence[dict[str, Any]], num_classes: int,
            threads: int | None = 1, repeats: int = 20, size: Sequence[int] | None = None) -> dict[str, float]:
    """Parameters, CPU milliseconds per batch-1 forward (at ``size``, default the model's image size)
    and held-out Dice of one model."""
    roi = list(model.config.image_size)
    example = torch.randn(1, model.config.in_channels, *(size or roi))
    return {"parameters": count_parameters(model), "cpu_ms": cpu_latency_ms(model, example, repeats, threads=threads),
            "dice": held_out_dice(model, items, roi, num_classes)}


def distill_report(model: Any, data: str = "stardist-nuclei-2d", threads: int | None = 1, repeats: int = 20,
                   extra: dict[str, torch.nn.Module] | None = None,
                   size: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """Measure the teacher and the student of a ``distill`` model (or checkpoint path) on a preset.

    ``extra`` adds other models (e.g. single branches) measured the same way.
    """
    from flemme_core.checkpoint import load_model
    from flemme_core.data import load_preset

    if not hasattr(model, "teacher"):
        model = load_model(model)
    if not (hasattr(model, "teacher") and hasattr(model, "student")):
        raise ConfigError("distill-report needs a distill model (arch: distill) with a teacher and a student")
    splits = load_preset(data)
    rows = {"teacher": model.teacher, "student": model.student, **(extra or {})}
    return {name: measure(m, splits.held_out, splits.num_classes, threads, repeats, size) for name, m in rows.items()}


def format_report(rows: dict[str, dict[str, float]], threads: int | None = 1) -> str:
    """A plain-text table plus the student/teacher ratios the MMFD goal is stated in."""
    lines = [f"{'model':<14}{'parameters':>12}{'CPU ms/forward':>16}{'Dice':>8}"]
    for name, r in rows.items():
        lines.append(f"{name:<14}{r['parameters']:>12,}{r['cpu_ms']:>16.1f}{r['dice']:>8.4f}")
    if "teacher" in rows and "student" in rows:
        t, s = rows["teacher"], rows["student"]
        lines.append(f"student/teacher: parameters 1/{t['parameters'] / s['parameters']:.1f}, "
                     f"{t['cpu_ms'] / s['cpu_ms']:.1f}x faster on CPU ({threads or 'default'} thread(s)), "
                     f"Dice {100 * (s['dice'] - t['dice']):+.2f} points")
    return "\n".join(lines)


@click.command("distill-report")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", default="stardist-nuclei-2d", show_default=True, help="dataset preset whose held-out "
              "items give the Dice")
@click.option("--threads", default=1, show_default=True, help="CPU threads for the timing (0: torch's default)")
@click.option("--repeats", default=20, show_default=True, help="timed forward passes (median reported)")
@click.option("--size", default=None, help="input size for the timing, e.g. 256,256 (default: the model's)")
def main(checkpoint: str, data: str, threads: int, repeats: int, size: str | None) -> None:
    """Teacher vs student of a distillation CHECKPOINT: parameters, CPU time, held-out Dice."""
    try:
        shape = [int(v) for v in size.replace("x", ",").split(",")] if size else None
    except ValueError:
        raise click.BadParameter(f"{size!r} is not a size like 256,256", param_hint="--size") from None
    rows = distill_report(checkpoint, data, threads or None, repeats, size=shape)  # FlemmeError: one line
    click.echo(format_report(rows, threads or None))
