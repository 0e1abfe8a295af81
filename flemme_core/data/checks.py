"""Checks run on the data before any training step, each failure a one-line DataError.

They catch what otherwise surfaces as an obscure tensor error minutes into a run:
image/label shape or affine mismatch, label values outside the configured classes,
an empty dataset, a patch larger than the (resampled) image, images of different
sizes that cannot be batched without cropping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .io import quiet_readers


@dataclass
class ItemFacts:
    """What the checks learnt about one training/held-out item."""

    name: str
    spatial: tuple[int, ...]
    channels: int
    spacing: tuple[float, ...] = ()
    affine: np.ndarray | None = None
    #: the file stores channels on an axis of its own (a 4D NIfTI, an RGB PNG): read as channels
    channel_axis_in_file: bool = False


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def check_not_empty(items: Sequence[Any], where: str, fix: str) -> None:
    if len(items) == 0:
        raise DataError(f"{where} is empty; {fix}")


def check_finite(array: np.ndarray, name: str) -> None:
    """NaN or Inf voxels make the loss non-finite at the first step: name the file now."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        count = int(bad.sum())
        nan = int(np.isnan(array).sum())
        raise DataError(f"{name} has {count} non-finite voxel(s) ({nan} NaN, {count - nan} Inf) of {array.size}; "
                        "fix the image (e.g. replace them by 0 or the background value)")


def check_splits_agree(train: Sequence[ItemFacts], held_out: Sequence[ItemFacts]) -> None:
    """Held-out items need the training items' channels and dimensions (else the final validation crashes)."""
    if not train:
        return
    ref = train[0]
    for fact in held_out:
        if fact.channels != ref.channels:
            raise DataError(f"held-out image {fact.name} has {fact.channels} channel(s) but the training images have "
                            f"{ref.channels} (e.g. {ref.name}); convert it (e.g. RGB to grayscale) or remove it")
        if len(fact.spatial) != len(ref.spatial):
            raise DataError(f"held-out image {fact.name} is {len(fact.spatial)}D but the training images are "
                            f"{len(ref.spatial)}D (e.g. {ref.name}); do not mix 2D and 3D images")


def file_notes(facts: Sequence[ItemFacts]) -> list[str]:
    """What the run header should say about how the files were read."""
    stored = [f for f in facts if f.channel_axis_in_file and f.channels > 1]
    if stored and len(stored) == len(facts) and len(facts[0].spatial) == 3:
        return [(f"all {len(facts)} images are 4D: the last axis is read as {facts[0].channels} channels of a 3D "
                 "image (not as time or a fourth spatial axis)")]
    return []


def check_label_values(label: np.ndarray, num_classes: int, name: str) -> None:
    """Every label value must be an integer class index in 0..num_classes-1."""
    values = np.unique(np.asarray(label))
    non_int = values[values != np.round(values)]
    if non_int.size:
        raise DataError(f"label {name} has non-integer values (e.g. {', '.join(f'{v:g}' for v in non_int[:3])}); "
                        "labels must be class indices (resample labels with nearest neighbour)")
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise DataError(f"label {name} has values {shown} outside the {num_classes} configured classes "
                        f"0..{num_classes - 1}; fix data.num_classes or remap the label values")


def check_pair_arrays(image: np.ndarray, label: np.ndarray | None, dims: int, name: str) -> None:
    """Channels-first image (C, *S) and label (1, *S) of the same spatial shape."""
    if image.ndim != dims + 1:
        raise DataError(f"{name}: image has shape {tuple(image.shape)}, expected (C, {', '.join('S' * dims)}) for "
                        f"{dims}D data")
    if label is None:
        return
    if label.ndim != dims + 1 or label.shape[0] != 1:
        raise DataError(f"{name}: label has shape {tuple(label.shape)}, expected one channel (1, "
                        f"{', '.join(map(str, image.shape[1:]))}); save labels as single-channel class indices")
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        raise DataError(f"{name}: image shape {_fmt(image.shape[1:])} and label shape {_fmt(label.shape[1:])} "
                        "differ; resample the label onto the image grid")


def check_arrays(items: Sequence[dict[str, np.ndarray]], *, dims: int, num_classes: int, where: str
                 ) -> list[ItemFacts]:
    """Check a preset's items (numpy) and return their facts."""
    facts = []
    for i, item in enumerate(items):
        name = f"{where} item {i}"
        label = item.get("label")
        check_pair_arrays(np.asarray(item["image"]), None if label is None else np.asarray(label), dims, name)
        check_finite(item["image"], name)
        if label is not None and num_classes > 0:
            check_label_values(label, num_classes, name)
        facts.append(ItemFacts(name, tuple(item["image"].shape[1:]), int(item["image"].shape[0])))
    return facts


def scan_num_classes(items: Sequence[dict[str, str]]) -> int:
    """Classes of label files that do not say how many there are: the largest value + 1 (at least
    2: background and one class); non-integer label values are one line."""
    from monai.transforms import LoadImage

    with quiet_readers():
        loader = LoadImage(image_only=True)
    top = 0
    for item in items:
        if "label" not in item:
            continue
        label = np.asarray(_load(loader, Path(item["label"])))
        if label.size and not np.all(np.mod(label, 1) == 0):
            raise DataError(f"label {Path(item['label']).name} has non-integer values; labels are class indices "
                            "(0 = background), or set data.num_classes and remap them")
        if label.size and label.min() < 0:
            raise DataError(f"label {Path(item['label']).name} has negative values; labels are class indices 0..K-1")
        top = max(top, int(label.max()) if label.size else 0)
    return max(2, top + 1)


def check_files(items: Sequence[dict[str, str]], *, num_classes: int, check_values: bool = True,
                where: str = "data") -> list[ItemFacts]:
    """Read every image/label pair with MONAI (as training will) and check shapes, affines and values."""
    from monai.transforms import LoadImage

    with quiet_readers():
        loader = LoadImage(image_only=True, ensure_channel_first=True)
    facts: list[ItemFacts] = []
    for item in items:
        img_path, lab_path = Path(item["image"]), Path(item["label"]) if "label" in item else None
        image = _load(loader, img_path)
        dims = image.ndim - 1
        affine = np.asarray(image.affine, dtype=np.float64)
        spacing = tuple(float(np.linalg.norm(affine[:dims, k])) for k in range(dims))
        fact = ItemFacts(img_path.name, tuple(int(s) for s in image.shape[1:]), int(image.shape[0]), spacing, affine)
        meta = getattr(image, "meta", {}) or {}
        fact.channel_axis_in_file = meta.get("original_channel_dim", "no_channel") not in ("no_channel", None)
        check_finite(image, f"image {img_path.name}")
        if facts and fact.channels != facts[0].channels:
            raise DataError(f"image {img_path.name} has {fact.channels} channels but {facts[0].name} has "
                            f"{facts[0].channels}; all images of a dataset need the same channels")
        if facts and len(fact.spatial) != len(facts[0].spatial):
            raise DataError(f"image {img_path.name} is {dims}D but {facts[0].name} is {len(facts[0].spatial)}D; "
                            "do not mix 2D and 3D images")
        if lab_path is not None:
            label = _load(loader, lab_path)
            pair = f"image {img_path.name} / label {lab_path.name}"
            if label.shape[0] != 1:
                raise DataError(f"label {lab_path.name} has {label.shape[0]} channels; save labels as single-channel "
                                "class indices (grayscale for PNG)")
            if tuple(label.shape[1:]) != fact.spatial:
                raise DataError(f"{pair}: shapes differ ({_fmt(fact.spatial)} vs {_fmt(label.shape[1:])}); "
                                "resample the label onto the image grid")
            lab_affine = np.asarray(label.affine, dtype=np.float64)
            if not np.allclose(lab_affine, affine, atol=1e-3, rtol=1e-4):
                raise DataError(f"{pair}: affines differ (origin {_vec(affine)} spacing {_fmt_sp(spacing)} vs origin "
                                f"{_vec(lab_affine)} spacing {_fmt_sp(_spacing(lab_affine, dims))}); "
                                "resample the label onto the image grid or fix its header")
            if check_values and num_classes > 0:
                check_label_values(np.asarray(label), num_classes, lab_path.name)
        facts.append(fact)
    return facts


def _load(loader: Any, path: Path) -> Any:
    if not path.exists():
        raise DataError(f"file {path} not found; fix the path in the datalist or folder")
    check_regular(path)
    try:
        return loader(str(path))
    except Exception as exc:  # any reader failure is a bad-input message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read {path.name}: {first[:160]}; check the file, or install its reader "
                        "(pip install 'flemme-core[data]' for NRRD/DICOM)") from exc


def check_regular(path: Path) -> None:
    """Only regular files (or folders: DICOM series) are read: never a FIFO or a device such as /dev/zero."""
    import stat

    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(f"{path} is not a regular file (a device, FIFO or socket); point the data at image files")


def _spacing(affine: np.ndarray, dims: int) -> tuple[float, ...]:
    return tuple(float(np.linalg.norm(affine[:dims, k])) for k in range(dims))


def _vec(affine: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in affine[:3, 3]) + ")"


def _fmt_sp(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:g}" for s in spacing)


def resampled_shape(fact: ItemFacts, axcodes: str | None, pixdim: Sequence[float] | None) -> tuple[int, ...]:
    """Spatial shape after Orientationd/Spacingd, estimated from the affine (no resampling done)."""
    shape, spacing = list(fact.spatial), list(fact.spacing or [1.0] * len(fact.spatial))
    dims = len(shape)
    if axcodes and fact.affine is not None and dims == 3:
        import nibabel.orientations as orient

        ornt = orient.ornt_transform(orient.io_orientation(fact.affine), orient.axcodes2ornt(axcodes[:dims]))
        order = [int(a) for a in ornt[:, 0]]
        perm = [order.index(k) for k in range(dims)]  # new axis k comes from input axis perm[k]
        shape, spacing = [shape[p] for p in perm], [spacing[p] for p in perm]
    if pixdim:
        shape = [max(1, round(s * sp / float(p))) for s, sp, p in zip(shape, spacing, pixdim)]
    return tuple(shape)


def check_patch(shapes: Sequence[tuple[int, ...]], names: Sequence[str], patch_size: Sequence[int]) -> None:
    """The patch must fit in every training image (after resampling); the message gives the largest that fits."""
    fits = [min(s[k] for s in shapes) for k in range(len(patch_size))]
    for shape, name in zip(shapes, names):
        if any(p > s for p, s in zip(patch_size, shape)):
            axis = next(k for k, (p, s) in enumerate(zip(patch_size, shape)) if p > s)
            example = [min(p, (f // 16) * 16 or f) for p, f in zip(patch_size, fits)]
            raise DataError(f"data.patch_size {list(patch_size)} is larger than training image {name} "
                            f"({_fmt(shape)}) on axis {axis}; set data.patch_size to at most {fits} (e.g. {example}) "
                            "or set data.transforms.pad: true")


def check_batchable(shapes: Sequence[tuple[int, ...]], batch_size: int) -> None:
    """Without a crop, a batch needs images of one size."""
    if batch_size > 1 and len(set(shapes)) > 1:
        a, b = sorted(set(shapes))[:2]
        raise DataError(f"training images differ in size ({_fmt(a)} vs {_fmt(b)}) and no crop is set; set "
                        "data.patch_size with a crop, or data.batch_size: 1")
