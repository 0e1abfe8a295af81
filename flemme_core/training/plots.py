"""PNG figures of a run (matplotlib, Agg backend: no display needed), readable at a glance.

* ``curves.png``: the training loss and its terms, the held-out metrics in [0, 1], the
  held-out metrics on their own scale (HD95 with its unit), and schedule values (the
  learning rate, any logged ``*_weight`` such as a VAE's ``kl_weight``) in their own panel,
  never among the losses. A single logged point is drawn as a marker; a dashed line marks
  where a multi-stage run (distillation) switches stage, labelled with the stage names.
* ``overlay.png``: a held-out slice cropped to the object (no empty border): the image,
  the label and the prediction in class colours with a legend of the class names, and the
  label outlined on the prediction (segmentation); or input / target / output (reconstruction).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .logs import read_metrics

#: row keys that are not plotted as curves.
META_KEYS = ("step", "split", "stage", "item", "image")
#: held-out values that are counts, not metrics (reported in summary.json, not plotted).
COUNT_KEYS = ("hd95_empty",)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def is_schedule(key: str) -> bool:
    """Logged values that are settings of the schedule, not losses (lr, ``*_weight``, ``schedule/*``)."""
    return key == "lr" or key.endswith("_weight") or key.startswith("schedule/")


def _numeric(rows: list[dict[str, Any]], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows)


def _stage_switches(rows: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """(step, previous stage, next stage) where the logged stage changes."""
    out, last = [], None
    for r in sorted((r for r in rows if r.get("stage") is not None), key=lambda r: r["step"]):
        if last is not None and r["stage"] != last[1]:
            out.append((last[0], last[1], r["stage"]))
        last = (r["step"], r["stage"])
    return out


def plot_curves(metrics_path: Path, out_path: Path, units: str = "") -> Path | None:
    """Loss, held-out metrics and schedule panels from ``metrics.jsonl``; ``units`` is HD95's unit."""
    if not Path(metrics_path).exists():
        return None
    rows = read_metrics(Path(metrics_path))
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    train_keys = [k for k in dict.fromkeys(k for r in train for k in r) if k not in META_KEYS and _numeric(train, k)]
    losses = [k for k in train_keys if not is_schedule(k)]
    if losses == ["loss"] or len(losses) == 2:  # one loss term: it is the loss
        losses = ["loss"]
    schedule = [k for k in train_keys if is_schedule(k)]
    val_keys = [k for k in dict.fromkeys(k for r in val for k in r)
                if k not in META_KEYS + COUNT_KEYS and "/" not in k and _numeric(val, k)]
    bounded = [k for k in val_keys if all(0.0 <= r[k] <= 1.0 for r in val if isinstance(r.get(k), (int, float)))]
    other = [k for k in val_keys if k not in bounded]
    panels = [("training loss", train, losses, "")]
    if bounded:
        panels.append(("held-out metrics", val, bounded, ""))
    if other:
        panels.append(("held-out metrics (own scale)", val, other, units))
    if schedule:
        panels.append(("schedule", train, schedule, ""))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    switches = _stage_switches(train + val)
    for ax, (title, data, names, unit) in zip(axes[0], panels):
        if title == "schedule" and "lr" in names and len(names) > 1:
            _plot_schedule(ax, data, names)
            names = []
        for key in names:
            pts = [(r["step"], r[key]) for r in data if isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            label = f"{key} ({unit})" if unit and key.startswith("hd") else key
            single = len(xs) == 1 or data is val
            ax.plot(xs, ys, label=label, marker="o" if single else None, ms=5 if len(xs) == 1 else 3,
                    lw=1.6 if key == "loss" else 1.0)
        for step, before, after in switches:
            ax.axvline(step, color="0.35", ls="--", lw=1.0)
            ax.annotate(f"{before} → {after}", xy=(step, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(3, 4), textcoords="offset points", fontsize=8, color="0.25")
        ax.set_xlabel("step")
        ax.set_title(title + (f" — HD95 in {unit}" if unit and any(k.startswith("hd") for k in names) else ""))
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return Path(out_path)


def _plot_schedule(ax: Any, data: list[dict[str, Any]], names: list[str]) -> None:
    """The learning rate on the left axis, the other schedule values (weights) on the right."""
    def series(key: str) -> tuple[tuple, tuple]:
        pts = [(r["step"], r[key]) for r in data if isinstance(r.get(key), (int, float))]
        return tuple(zip(*pts)) if pts else ((), ())

    marker = "o" if len(data) == 1 else None
    lines = ax.plot(*series("lr"), color="C0", label="lr", marker=marker)
    ax.set_ylabel("learning rate")
    twin = ax.twinx()
    for i, key in enumerate(k for k in names if k != "lr"):
        lines += twin.plot(*series(key), color=f"C{i + 1}", label=key, marker=marker)
    twin.set_ylabel("weight")
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8)


def _crop_box(*arrays: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """The bounding box of whatever is not background in any array (plus a margin)."""
    mask = np.zeros(arrays[0].shape, dtype=bool)
    for a in arrays:
        background = np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]))  # the border's value
        mask |= np.abs(a - background) > 1e-6
    if not mask.any():
        return slice(None), slice(None)
    rows, cols = np.where(mask.any(axis=1))[0], np.where(mask.any(axis=0))[0]
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def plot_overlay(example: dict[str, Any], out_path: Path, task: Any, title: str = "",
                 class_names: Sequence[str] = ()) -> Path:
    """Image | label | prediction, cropped to the object; segmentation classes coloured with a legend."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    image, label, pred = (np.asarray(example[k], dtype=np.float32) for k in ("image", "label", "prediction"))
    image, label, pred = image.T, label.T, pred.T  # first array axis left-right, origin lower
    box = _crop_box(image, label, pred)
    image, label, pred = image[box], label[box], pred[box]
    h, w = image.shape
    panel_w = 4.2
    panel_h = min(max(panel_w * h / max(w, 1), 2.0), 8.0)
    segmentation = task.labels  # a flemme_core.tasks.Task: class labels get colours and a legend
    fig, axes = plt.subplots(1, 3, figsize=(3 * panel_w + (2.2 if segmentation else 0.2), panel_h + 0.8))
    if segmentation:
        n = int(max(label.max(initial=0), pred.max(initial=0))) + 1
        n_colors = max(n, len(class_names), 2)
        cmap = plt.get_cmap("tab10" if n_colors <= 10 else "tab20" if n_colors <= 20 else "nipy_spectral", n_colors)
        panels = [("image", None), ("label", label), ("prediction", pred)]
        for ax, (name, mask) in zip(axes, panels):
            ax.imshow(image, cmap="gray", origin="lower")
            if mask is not None:
                shown = np.ma.masked_where(mask == 0, mask)
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=n_colors - 1, alpha=0.5, origin="lower",
                          interpolation="nearest")
                if name == "prediction":
                    ax.contour(label, levels=np.arange(0.5, n), colors="white", linewidths=0.6, origin="lower")
            ax.set_title(name + (" (white: label outline)" if name == "prediction" else ""))
        present = sorted((set(np.unique(label).astype(int)) | set(np.unique(pred).astype(int))) - {0})
        names = list(class_names) if len(class_names) >= n else [f"class {k}" for k in range(n_colors)]
        shown_classes = present[:15]
        handles = [Patch(color=cmap(k), alpha=0.7, label=f"{k}: {names[k]}") for k in shown_classes]
        if len(present) > len(shown_classes):
            handles.append(Patch(color="white", label=f"... {len(present) - len(shown_classes)} more"))
        if handles:
            fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False, title="classes")
    else:
        lo, hi = float(min(label.min(), image.min())), float(max(label.max(), image.max()))
        for ax, (name, arr) in zip(axes, [("input", image), ("target", label), ("output", pred)]):
            ax.imshow(arr, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.86 if segmentation else 1.0, 1))
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return Path(out_path)
