"""The preprocessing a model was trained with, as data: recorded in the checkpoint and replayed
by ``flemme predict`` so that a raw image reaches the model exactly as training saw it.

A run's preprocessing is a list of steps (plain JSON dicts), applied in order:

* ``{"name": "orientation", "axcodes": "RAS"}`` and ``{"name": "spacing", "pixdim": [...]}``:
  geometric (file sources); ``predict`` resamples the input, infers, and resamples the
  output back onto the input's grid (MONAI's invertible transforms).
* ``{"name": "linear", "subtract": a, "divide": b, "clip": [lo, hi] | null}``: fixed
  constants, per channel or one for all, e.g. a preset's whole-image statistics (so a crop
  of the image is scaled exactly like the whole image was);
* ``{"name": "zscore", "nonzero": bool}`` / ``{"name": "percentile", "lower", "upper", "clip"}``:
  statistics of each image itself (MONAI's NormalizeIntensity / ScaleIntensityRangePercentiles,
  channel-wise), what ``data.transforms.normalize`` does.

A dataset preset (built-in or registered by a plugin) states the steps its factory applied
to the source images in :attr:`DatasetSplits.preprocessing`; ``data.transforms`` adds its own.
Nothing here knows any preset by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

Step = dict[str, Any]
INTENSITY = ("linear", "zscore", "percentile")
GEOMETRIC = ("orientation", "spacing")


def linear(subtract: float | Sequence[float], divide: float | Sequence[float],
           clip: Sequence[float] | None = None, why: str = "") -> Step:
    """A fixed ``(x - subtract) / divide`` (then ``clip``) step; ``why`` says where the constants come from."""
    def plain(v: Any) -> Any:
        return [float(x) for x in v] if isinstance(v, (list, tuple, np.ndarray)) else float(v)

    step: Step = {"name": "linear", "subtract": plain(subtract), "divide": plain(divide),
                  "clip": [float(c) for c in clip] if clip is not None else None}
    if why:
        step["why"] = why
    return step


def from_transforms(parsed: Mapping[str, Mapping[str, Any]]) -> list[Step]:
    """The deterministic steps of a parsed ``data.transforms`` section (as the validation pipeline runs them)."""
    steps: list[Step] = []
    if "orientation" in parsed:
        steps.append({"name": "orientation", "axcodes": parsed["orientation"]["axcodes"]})
    if "spacing" in parsed:
        steps.append({"name": "spacing", "pixdim": [float(p) for p in parsed["spacing"]["pixdim"]]})
    norm = parsed.get("normalize")
    if norm and norm["name"] == "zscore":
        steps.append({"name": "zscore", "nonzero": bool(norm["nonzero"])})
    elif norm:
        steps.append({"name": "percentile", "lower": float(norm["lower"]), "upper": float(norm["upper"]),
                      "clip": bool(norm["clip"])})
    return steps


def check_steps(steps: Any, where: str = "preprocessing") -> list[Step]:
    """Validate a list of steps (a plugin preset's, or a checkpoint's); one line per mistake."""
    if not isinstance(steps, (list, tuple)):
        raise ConfigError(f"{where} must be a list of steps like {{name: linear, subtract: 0, divide: 1}}, "
                          f"got {type(steps).__name__}")
    out = []
    for step in steps:
        name = step.get("name") if isinstance(step, Mapping) else None
        if name not in INTENSITY + GEOMETRIC:
            raise ConfigError(f"{where}: unknown step {step!r:.80}; use one of {', '.join(INTENSITY + GEOMETRIC)}")
        out.append(dict(step))
    return out


def _per_channel(value: Any, c: int) -> float:
    return float(value[c] if isinstance(value, (list, tuple)) else value)


def apply_intensity(x: np.ndarray, steps: Sequence[Step]) -> np.ndarray:
    """The intensity steps on a ``(C, *S)`` array (geometric steps are skipped here)."""
    out = np.asarray(x, dtype=np.float32)
    for step in steps:
        name = step["name"]
        if name in GEOMETRIC:
            continue
        if name == "linear":
            res = np.empty_like(out)
            for c in range(out.shape[0]):
                res[c] = (out[c] - _per_channel(step["subtract"], c)) / max(_per_channel(step["divide"], c), 1e-12)
            if step.get("clip") is not None:
                res = np.clip(res, *step["clip"])
            out = res.astype(np.float32)
        elif name == "zscore":
            from monai.transforms import NormalizeIntensity

            out = np.asarray(NormalizeIntensity(nonzero=bool(step.get("nonzero", False)), channel_wise=True)(out),
                             dtype=np.float32)
        elif name == "percentile":
            from monai.transforms import ScaleIntensityRangePercentiles

            out = np.asarray(ScaleIntensityRangePercentiles(
                lower=float(step.get("lower", 1.0)), upper=float(step.get("upper", 99.8)), b_min=0.0, b_max=1.0,
                clip=bool(step.get("clip", False)), channel_wise=True)(out), dtype=np.float32)
    return out


def geometric(steps: Sequence[Step]) -> Any | None:
    """A MONAI ``Compose`` of the orientation/spacing steps (invertible), or None when there are none."""
    geo = [s for s in steps if s["name"] in GEOMETRIC]
    if not geo:
        return None
    from monai import transforms as T

    parts: list[Any] = []
    for step in geo:
        if step["name"] == "orientation":
            parts.append(T.Orientation(axcodes=step["axcodes"], labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        else:
            parts.append(T.Spacing(pixdim=step["pixdim"], mode="bilinear"))
    return T.Compose(parts)


def describe(steps: Sequence[Step]) -> str:
    """One line for ``flemme info`` / ``predict``: what is applied to an input image."""
    if not steps:
        return "none (images are fed as read)"
    parts = []
    for s in steps:
        if s["name"] == "linear":
            parts.append(f"(x - {_short(s['subtract'])}) / {_short(s['divide'])}"
                         + (f" clipped to {s['clip']}" if s.get("clip") else "")
                         + (f" [{s['why']}]" if s.get("why") else ""))
        elif s["name"] == "zscore":
            parts.append("z-score per image" + (" (non-zero voxels)" if s.get("nonzero") else ""))
        elif s["name"] == "percentile":
            parts.append(f"percentiles {s.get('lower')}-{s.get('upper')} per image -> 0..1")
        elif s["name"] == "orientation":
            parts.append(f"orientation {s['axcodes']}")
        else:
            parts.append(f"spacing {s['pixdim']}")
    return "; ".join(parts)


def _short(v: Any) -> str:
    return "[" + ", ".join(f"{x:.6g}" for x in v) + "]" if isinstance(v, list) else f"{v:.6g}"
