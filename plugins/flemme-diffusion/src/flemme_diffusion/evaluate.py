"""Sample quality of a generative model against held-out images, with two controls in the same run.

Numbers only mean something next to references measured the same way, on the same
held-out images, with the same kernels:

* ``control_train``: the *training* images scored as if they were samples (the real-data
  floor: what a perfect generator of this distribution could get);
* ``memorisation_ratio`` (see :mod:`.metrics`): the training images themselves would
  score 0, so the training control has none;
* ``control_collapsed``: the training mean plus i.i.d. Gaussian noise (std 5 % of the data
  range), as many images as samples (what a collapsed generator gets: high precision,
  recall near 0, large RBF-MMD², MS-SSIM among samples near 1).

Keys without a ``/`` are the model's; ``control_*/`` and ``heldout/`` keys are the references.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from .metrics import features, memorisation_ratio, rbf_bandwidths, sample_quality

COLLAPSE_NOISE = 0.05


def stack_images(items: Sequence[Any], key: str = "image") -> torch.Tensor:
    """``(N, C, *S)`` float images from a dataset of dict items (MONAI datasets included)."""
    out = []
    for i in range(len(items)):
        value = items[i]
        value = value[0] if isinstance(value, list) else value  # crop transforms may return lists
        image = value[key]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        out.append(image.float())
    return torch.stack(out)


def draw(model: Any, n: int, seed: int = 0, chunk: int = 64, report: bool = True, **kwargs: Any) -> torch.Tensor:
    """``n`` samples in chunks; sample ``i`` still starts from ``seed + i``. With ``report`` a
    progress line per chunk goes to stderr (``flemme eval`` of a generator runs for minutes)."""
    import sys

    parts = []
    start_time = time.perf_counter()
    for start in range(0, n, chunk):
        parts.append(model.sample(min(chunk, n - start), seed=seed + start, **kwargs))
        if report:
            done = start + len(parts[-1])
            elapsed = time.perf_counter() - start_time
            print(f"sampled {done}/{n} for the generation metrics ({elapsed:.0f} s, eta "
                  f"{elapsed / done * (n - done):.0f} s)", file=sys.stderr, flush=True)
    return torch.cat(parts).cpu().float()


def generation_report(samples: torch.Tensor, held_out: torch.Tensor, train: torch.Tensor,
                      data_range: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> dict[str, float]:
    """Metrics of ``samples`` and of both controls against ``held_out`` (see the module docstring)."""
    lo, hi = data_range
    span = hi - lo
    bws = rbf_bandwidths(features(held_out))
    out: dict[str, float] = {}
    for key, value in sample_quality(samples, held_out, span, bws).items():
        out[key] = value
    out["memorisation_ratio"] = memorisation_ratio(samples, train, held_out)
    for key, value in sample_quality(train, held_out, span, bws).items():
        out[f"control_train/{key}"] = value
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples.shape, generator=gen) * COLLAPSE_NOISE * span
    collapsed = (train.mean(0, keepdim=True) + noise).clamp(lo, hi)
    for key, value in sample_quality(collapsed, held_out, span, bws).items():
        out[f"control_collapsed/{key}"] = value
    out["control_collapsed/memorisation_ratio"] = memorisation_ratio(collapsed, train, held_out)
    from .metrics import ms_ssim_pairs

    out["heldout/ms_ssim_pairs"] = ms_ssim_pairs(held_out, span)
    out["num_samples"] = float(len(samples))
    out["num_held_out"] = float(len(held_out))
    return out


def evaluate_generator(model: Any, held_out: Sequence[Any], train: Sequence[Any], num_samples: int | None = None,
                       seed: int = 0, **sample_kwargs: Any) -> dict[str, float]:
    """Draw as many samples as training images (at most 256) and report against the held-out set."""
    held = stack_images(held_out)
    tr = stack_images(train)
    n = num_samples or min(len(tr), 256)
    opts = getattr(model, "options", None)
    data_range = tuple(float(v) for v in getattr(opts, "input_range", (0.0, 1.0)))
    start = time.perf_counter()
    samples = draw(model, n, seed=seed, **sample_kwargs)
    seconds = time.perf_counter() - start
    report = generation_report(samples, held, tr, data_range, seed)  # type: ignore[arg-type]
    report["seconds_per_sample"] = seconds / n
    return report
