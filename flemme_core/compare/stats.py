"""Mean ± std over seeds, and the paired comparison of a row with its baseline.

The paired comparison uses the differences ``d[s, i] = row[s, i] - baseline[s, i]`` on the
same seed ``s`` and held-out item ``i``. Its interval is a two-level (hierarchical)
percentile bootstrap: resample the seeds with replacement, then, inside each drawn seed,
the items with replacement, and take the mean; so the interval carries both the training
noise of the seeds and the sampling of the held-out items. With one held-out item (a 3D
volume) it resamples seeds only; with 3 seeds it is coarse (there are 10 seed multisets),
which is the honest answer to "is this seed noise?". numpy only, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, std, len(finite)


def bootstrap_indices(num_seeds: int, num_items: int, resamples: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seed draws ``(B, S)`` then item draws ``(B, S, I)``, in this order from ``rng``."""
    seeds = rng.integers(0, num_seeds, size=(resamples, num_seeds))
    items = rng.integers(0, num_items, size=(resamples, num_seeds, num_items))
    return seeds, items


def paired_bootstrap(diffs: np.ndarray, resamples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``diffs`` (seeds x items) and its ``level`` percentile bootstrap interval."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"diffs must be a non-empty (seeds, items) array, got shape {d.shape}")
    seeds, items = bootstrap_indices(d.shape[0], d.shape[1], resamples, np.random.default_rng(seed))
    stats = d[seeds[:, :, None], items].mean(axis=(1, 2))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)


def paired_comparison(row: dict[int, list[float]], base: dict[int, list[float]], higher_is_better: bool,
                      resamples: int = 10000, seed: int = 0) -> dict[str, Any] | None:
    """Row vs baseline on the seeds both have, item by item (items where either is not finite are dropped).

    ``row``/``base`` map seed -> per-item values. Returns the mean difference, its 95%
    interval, the seeds in which the row's mean is better and the pairs used; None when
    nothing pairs.
    """
    seeds = sorted(set(row) & set(base))
    per_seed = []
    for s in seeds:
        a, b = np.asarray(row[s], dtype=np.float64), np.asarray(base[s], dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"seed {s}: {a.size} vs {b.size} held-out items; the rows were evaluated on different data")
        per_seed.append(a - b)
    if not per_seed:
        return None
    d = np.stack(per_seed)
    keep = np.isfinite(d).all(axis=0)
    if not keep.any():
        return None
    d = d[:, keep]
    mean, low, high = paired_bootstrap(d, resamples, seed)
    sign = 1.0 if higher_is_better else -1.0
    better = int(sum(sign * d[k].mean() > 0 for k in range(len(seeds))))
    return {"diff": mean, "low": low, "high": high, "better_seeds": better, "seeds": len(seeds),
            "items": int(d.shape[1])}
