"""MONAI dictionary-transform pipelines built from the ``data.transforms`` config section.

The section maps transform names to options; the pipeline order is fixed (load,
orientation, spacing, normalize, pad, crop, flip, rotate90, rotate, elastic, then the
reconstruction pair) whatever the order in the YAML, so a config cannot, say, flip
before cropping by label. A value of ``false``/``null`` disables a transform, ``true``
uses its defaults, a number is the probability of a random one, a string or list is
its main option, and a mapping gives options by name::

    transforms:
      orientation: RAS              # file sources only (presets are already oriented)
      spacing: [1.0, 1.0, 1.0]      # file sources only
      normalize: zscore             # or percentile, none, {name: percentile, lower: 1, upper: 99.8}
      crop: label                   # RandCropByPosNegLabeld; random = RandSpatialCrop; none
      flip: 0.5                     # RandFlipd on every spatial axis, independently
      rotate90: 0.5                 # RandRotate90d on axes (0, 1) (needs a square patch there)
      rotate: {prob: 0.2, degrees: 15}
      elastic: 0.1                  # Rand2DElasticd / Rand3DElasticd
      kspace: {pattern: random, acceleration: 4, center_fraction: 0.08}   # reconstruction pairs
      denoise: {sigma: 0.1}

Validation pipelines keep only the deterministic part (load to normalize) and a
per-item seeded reconstruction pair, so held-out images are evaluated whole and
identically every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, unknown_name_message

RANDOM = ("flip", "rotate90", "rotate", "elastic")
#: every transform name with its default options (the first key is the "main" option).
DEFAULTS: dict[str, dict[str, Any]] = {
    "orientation": {"axcodes": "RAS"},
    "spacing": {"pixdim": None},
    "normalize": {"name": "zscore", "nonzero": False, "lower": 1.0, "upper": 99.8, "clip": False},
    "pad": {"mode": "edge"},
    "crop": {"name": "label", "pos": 1.0, "neg": 1.0, "num_samples": 1},
    "flip": {"prob": 0.5, "axes": None},
    "rotate90": {"prob": 0.5, "axes": [0, 1]},
    "rotate": {"prob": 0.2, "degrees": 15.0},
    "elastic": {"prob": 0.1, "sigma": [5.0, 8.0], "magnitude": None, "spacing": [20, 20]},
    "kspace": {"pattern": "random", "acceleration": 4.0, "center_fraction": 0.08, "rescale": True},
    "denoise": {"sigma": 0.1, "kind": "gaussian", "rescale": True},
}
ORDER = list(DEFAULTS)
CHOICES = {("normalize", "name"): ("zscore", "percentile", "none"), ("crop", "name"): ("label", "random", "none"),
           ("kspace", "pattern"): ("random", "equispaced"), ("denoise", "kind"): ("gaussian", "rician"),
           ("pad", "mode"): ("edge", "constant", "reflect", "symmetric")}


def parse_transforms(section: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Validate ``data.transforms`` and return the enabled transforms with full options, in pipeline order."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"data.transforms must be a mapping of transform names to options, got {section!r:.60}")
    out: dict[str, dict[str, Any]] = {}
    for name, value in section.items():
        if name not in DEFAULTS:
            raise ConfigError(unknown_name_message("transform", str(name), DEFAULTS, "in data.transforms"))
        if value is None or value is False or (name in RANDOM and isinstance(value, (int, float))
                                               and not isinstance(value, bool) and value == 0):
            continue
        opts = dict(DEFAULTS[name])
        main = next(iter(opts))
        if value is True:
            pass
        elif isinstance(value, Mapping):
            for key, v in value.items():
                if key not in opts:
                    raise ConfigError(unknown_name_message(f"option of transform {name!r}", str(key), opts,
                                                           f"in data.transforms.{name}"))
                opts[key] = v
        else:
            opts[main] = value
        for (tname, key), allowed in CHOICES.items():
            if tname == name and opts[key] not in allowed:
                raise ConfigError(unknown_name_message(f"data.transforms.{name} {key}", str(opts[key]), allowed))
        if name in RANDOM and not (isinstance(opts["prob"], (int, float)) and 0 <= opts["prob"] <= 1):
            raise ConfigError(f"data.transforms.{name}: probability must be in [0, 1], got {opts['prob']!r}")
        out[name] = opts
    if "kspace" in out and "denoise" in out:
        raise ConfigError("data.transforms: kspace and denoise both make the input/target pair; keep one")
    if out.get("normalize", {}).get("name") == "none":
        del out["normalize"]
    if out.get("crop", {}).get("name") == "none":
        del out["crop"]
    return {name: out[name] for name in ORDER if name in out}


def _spatial_axes(option: Any, dims: int, name: str) -> list[int]:
    axes = list(range(dims)) if option is None else [int(a) for a in option]
    if any(a < 0 or a >= dims for a in axes):
        raise ConfigError(f"data.transforms.{name}: axes {axes} must be spatial axes 0..{dims - 1} (channels excluded)")
    return axes


def check_pipeline(parsed: Mapping[str, Mapping[str, Any]], *, dims: int, patch_size: Sequence[int] | None,
                   from_files: bool, has_label: bool) -> None:
    """Config combinations that cannot work, as one-line ConfigErrors (before any data is read)."""
    for name in ("orientation", "spacing"):
        if name in parsed and not from_files:
            raise ConfigError(f"data.transforms.{name} applies to image files; presets are already oriented and "
                              "resampled (remove it, or use the preset's own options such as resolution)")
    if "spacing" in parsed:
        pixdim = parsed["spacing"]["pixdim"]
        if not isinstance(pixdim, (list, tuple)) or len(pixdim) != dims:
            raise ConfigError(f"data.transforms.spacing needs {dims} voxel sizes, e.g. spacing: {[1.0] * dims}")
    crop = parsed.get("crop")
    if crop and patch_size is None:
        raise ConfigError("data.patch_size is required to crop; set e.g. patch_size: "
                          f"{[64] * dims if dims == 2 else [64, 64, 64]}")
    if crop and crop["name"] == "label" and not has_label:
        raise ConfigError("data.transforms.crop: label needs labels and this data has none; use crop: random")
    if "rotate90" in parsed and patch_size is not None:
        a, b = _spatial_axes(parsed["rotate90"]["axes"], dims, "rotate90")[:2]
        if patch_size[a] != patch_size[b]:
            raise ConfigError(f"data.transforms.rotate90 turns axes {a} and {b} but the patch is {patch_size[a]} x "
                              f"{patch_size[b]} there; make the patch square on those axes or use rotate")
    if ("kspace" in parsed) and dims != 2:
        raise ConfigError("data.transforms.kspace simulates 2D Cartesian sampling; use it with a 2D dataset")


def build_transforms(parsed: Mapping[str, Mapping[str, Any]], *, dims: int, patch_size: Sequence[int] | None,
                     train: bool, from_files: bool, has_label: bool, seed: int = 0):
    """A MONAI ``Compose`` for training (``train=True``) or for whole-image evaluation."""
    import numpy as np
    import torch
    from monai import transforms as T

    from .io import quiet_readers
    from .recon import KspaceUndersampled, NoisyPair, PerItemSeeded

    keys = ["image", "label"] if has_label else ["image"]
    interp = ["bilinear", "nearest"][: len(keys)]
    out: list[Any] = []
    if from_files:
        with quiet_readers():
            out += [T.LoadImaged(keys, image_only=True), T.EnsureChannelFirstd(keys)]
    else:
        out.append(T.EnsureTyped(keys, track_meta=False))
    if "orientation" in parsed:
        out.append(T.Orientationd(keys, axcodes=parsed["orientation"]["axcodes"],
                                    labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if "spacing" in parsed:
        out.append(T.Spacingd(keys, pixdim=parsed["spacing"]["pixdim"], mode=interp))
    norm = parsed.get("normalize")
    if norm and norm["name"] == "zscore":
        out.append(T.NormalizeIntensityd("image", nonzero=bool(norm["nonzero"]), channel_wise=True))
    elif norm:
        out.append(T.ScaleIntensityRangePercentilesd("image", lower=float(norm["lower"]), upper=float(norm["upper"]),
                                                     b_min=0.0, b_max=1.0, clip=bool(norm["clip"]),
                                                     channel_wise=True))
    if train:
        if "pad" in parsed and patch_size is not None:
            out.append(T.SpatialPadd(keys, spatial_size=list(patch_size), mode=parsed["pad"]["mode"]))
        crop = parsed.get("crop")
        if crop:
            n = int(crop["num_samples"])
            if crop["name"] == "label":
                out.append(T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=list(patch_size),
                                                    pos=float(crop["pos"]), neg=float(crop["neg"]), num_samples=n))
            elif n > 1:
                out.append(T.RandSpatialCropSamplesd(keys, roi_size=list(patch_size), num_samples=n,
                                                     random_size=False))
            else:
                out.append(T.RandSpatialCropd(keys, roi_size=list(patch_size), random_size=False))
        if "flip" in parsed:
            for axis in _spatial_axes(parsed["flip"]["axes"], dims, "flip"):
                out.append(T.RandFlipd(keys, prob=float(parsed["flip"]["prob"]), spatial_axis=axis))
        if "rotate90" in parsed:
            axes = _spatial_axes(parsed["rotate90"]["axes"], dims, "rotate90")
            out.append(T.RandRotate90d(keys, prob=float(parsed["rotate90"]["prob"]), max_k=3,
                                       spatial_axes=tuple(axes[:2])))
        if "rotate" in parsed:
            r = math.radians(float(parsed["rotate"]["degrees"]))
            ranges = {"range_x": r} if dims == 2 else {"range_x": r, "range_y": r, "range_z": r}
            out.append(T.RandRotated(keys, prob=float(parsed["rotate"]["prob"]), keep_size=True, mode=interp,
                                     padding_mode="border", **ranges))
        if "elastic" in parsed:
            e = parsed["elastic"]
            if dims == 2:
                out.append(T.Rand2DElasticd(keys, spacing=tuple(e["spacing"]),
                                            magnitude_range=tuple(e["magnitude"] or (1.0, 2.0)),
                                            prob=float(e["prob"]), mode=interp, padding_mode="border"))
            else:
                out.append(T.Rand3DElasticd(keys, sigma_range=tuple(e["sigma"]),
                                            magnitude_range=tuple(e["magnitude"] or (50.0, 100.0)),
                                            prob=float(e["prob"]), mode=interp, padding_mode="border"))
    pair = None
    if "kspace" in parsed:
        pair = KspaceUndersampled(**parsed["kspace"])
    elif "denoise" in parsed:
        pair = NoisyPair(**parsed["denoise"])
    if pair is not None:
        out.append(pair if train else PerItemSeeded(pair, seed=seed))
    out.append(T.EnsureTyped("image", dtype=torch.float32, track_meta=False))
    if pair is not None:
        out.append(T.EnsureTyped("label", dtype=torch.float32, track_meta=False))
    elif has_label:
        out.append(T.EnsureTyped("label", dtype=torch.int64, track_meta=False))
    compose = T.Compose(out)
    compose.set_random_state(seed=int(np.uint32(seed)))
    return compose
