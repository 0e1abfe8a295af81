"""PNG figures of a run (matplotlib, Agg backend: no display needed).

* ``curves.png``: training loss (and its terms) and every held-out metric against step.
* ``overlay.png``: a held-out slice: the image, the label and the prediction outlined
  over it (segmentation), or input / target / output (reconstruction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .logs import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """Loss curves (left) and held-out metrics (right) from ``metrics.jsonl``."""
    if not Path(metrics_path).exists():
        return None
    rows = read_metrics(Path(metrics_path))
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    keys = [k for k in (train[0] if train else {}) if k not in ("step", "split", "stage", "lr")]
    if len(keys) == 2:  # one loss term: it is the loss
        keys = ["loss"]
    shown = [k for k in (val[-1] if val else {}) if k not in ("step", "split") and "/" not in k]
    bounded = [k for k in shown if all(0.0 <= r[k] <= 1.0 for r in val if r.get(k) is not None)]
    other = [k for k in shown if k not in bounded]
    plt = _pyplot()
    panels = 2 + bool(other)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    for ax, names, title, marker in ((axes[0], keys, "training loss", None),
                                     (axes[1], bounded, "held-out metrics", "o"),
                                     (axes[2] if other else None, other, "held-out metrics (own scale)", "o")):
        if ax is None:
            continue
        rows = train if ax is axes[0] else val
        for key in names:
            xs = [r["step"] for r in rows if r.get(key) is not None]
            ys = [r[key] for r in rows if r.get(key) is not None]
            ax.plot(xs, ys, label=key, marker=marker, ms=3, lw=1.5 if key == "loss" else 1.0)
        ax.set_xlabel("step")
        ax.set_title(title)
        if names:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return Path(out_path)


def plot_overlay(example: dict[str, Any], out_path: Path, task: str, title: str = "") -> Path:
    """Image | label | prediction (segmentation: coloured classes over the image)."""
    plt = _pyplot()
    image, label, pred = (np.asarray(example[k], dtype=np.float32) for k in ("image", "label", "prediction"))
    image, label, pred = image.T, label.T, pred.T  # first array axis left-right, origin lower
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    if task == "segmentation":
        n = int(max(label.max(initial=0), pred.max(initial=0))) + 1
        cmap = plt.get_cmap("tab10", max(n, 2))
        panels = [("image", None), ("label", label), ("prediction", pred)]
        for ax, (name, mask) in zip(axes, panels):
            ax.imshow(image, cmap="gray", origin="lower")
            if mask is not None:
                shown = np.ma.masked_where(mask == 0, mask)
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=max(n - 1, 1), alpha=0.45, origin="lower",
                          interpolation="nearest")
                if name == "prediction":
                    ax.contour(label, levels=np.arange(0.5, n), colors="white", linewidths=0.5, origin="lower")
            ax.set_title(name + (" (white: label outline)" if name == "prediction" else ""))
    else:
        lo, hi = float(min(label.min(), image.min())), float(max(label.max(), image.max()))
        for ax, (name, arr) in zip(axes, [("input", image), ("target", label), ("output", pred)]):
            ax.imshow(arr, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return Path(out_path)
