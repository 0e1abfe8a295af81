"""The Pareto plot: the study's metric against training time and against parameters, per dataset.

Each row is a point (mean over seeds, with the std as an error bar); the Pareto front (no
other row is both better and cheaper) is drawn as a step line, so the rows worth their
cost stand out.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .report import higher_is_better


def pareto_front(points: list[tuple[float, float]], higher: bool) -> list[int]:
    """Indices of the points no other point dominates (cost lower or equal and metric better or
    equal, one strictly), sorted by cost."""
    front = []
    for i, (c, m) in enumerate(points):
        dominated = any((c2 <= c and (m2 >= m if higher else m2 <= m)) and (c2 < c or m2 != m)
                        for j, (c2, m2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def time_axis(group: list[dict[str, Any]]) -> tuple[str, str, bool]:
    """The cost-in-time axis: training time per run, unless the budget made it equal for every
    row (equal wall-clock: all within 5%), where it would plot noise; then the time per step,
    which is what the rows paid for their steps."""
    times = [e["train_seconds"] for e in group if e.get("train_seconds")]
    if times and max(times) <= 1.05 * min(times) and all(e.get("s_per_step") for e in group):
        return "s_per_step", f"training s/step (every run ~{min(times):.0f} s)", False
    return "train_seconds", "training time per run (s)", False


def pareto_plot(entries: list[dict[str, Any]], path: str) -> None:
    datasets = list(dict.fromkeys(e["dataset"] for e in entries))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.2 * len(datasets)), squeeze=False)
    for r, ds in enumerate(datasets):
        group = [e for e in entries if e["dataset"] == ds and e["metrics"].get(e["metric"], {}).get("n")]
        if not group:
            continue
        metric = group[0]["metric"]
        higher = higher_is_better(metric)
        for ax, (key, label, log) in zip(axes[r], (time_axis(group), ("parameters", "parameters", True))):
            pts = [(e[key], e["metrics"][metric]["mean"]) for e in group if e[key] is not None]
            named = [e for e in group if e[key] is not None]
            for (x, y), e in zip(pts, named):
                ax.errorbar(x, y, yerr=e["metrics"][metric]["std"], fmt="o", capsize=3)
                ax.annotate(e["row"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            front = pareto_front(pts, higher)
            if len(front) > 1:
                ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="0.5",
                        linestyle="--", linewidth=1, label="Pareto front")
                ax.legend(loc="lower right" if higher else "upper right", fontsize=8)
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{metric} (held out)")
            ax.set_title(f"{ds}: {metric} vs {label.split(' (')[0]}", fontsize=10)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
