"""Where file-based data comes from: a Decathlon-style datalist JSON or image/label folders.

Both give lists of ``{"image": path, "label": path}`` dicts (absolute paths as strings)
that MONAI's ``LoadImaged`` reads. Every path is checked here, before any training,
and a missing one is named in a one-line :class:`DataError`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import DataError

FileItem = dict[str, str]

#: suffixes MONAI's readers handle (NIfTI, NRRD, MetaImage, DICOM files, PNG/JPG/TIFF, NumPy).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg",
                  ".bmp", ".tif", ".tiff", ".npy", ".npz")


def stem(path: Path) -> str:
    """File name without its image suffix ('case_01.nii.gz' -> 'case_01'); a folder (DICOM series) keeps its name."""
    name = path.name
    if path.is_dir():
        return name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _entries(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} not found; set data.{what} to an existing folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.name.lower().endswith(IMAGE_SUFFIXES):
            found.setdefault(stem(p), p)
    return found


def folder_pairs(images: str | Path, labels: str | Path) -> list[FileItem]:
    """Pair files (or DICOM series folders) of two folders by matching stems, sorted by stem."""
    imgs, labs = _entries(Path(images), "images"), _entries(Path(labels), "labels")
    if not imgs:
        raise DataError(f"no image files in {images} (looked for {', '.join(IMAGE_SUFFIXES[:8])}, ... or DICOM "
                        "series folders); put the images there or fix data.images")
    missing = sorted(set(imgs) - set(labs))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"no label in {labels} for image(s) {shown} (labels are matched to images by file stem); "
                        "add the label files or remove those images")
    return [{"image": str(imgs[k].resolve()), "label": str(labs[k].resolve())} for k in sorted(imgs)]


def read_datalist(path: str | Path, base_dir: str | Path | None = None) -> tuple[list[FileItem], list[FileItem]]:
    """Training and validation items of a Medical Segmentation Decathlon datalist JSON.

    Paths are relative to ``base_dir`` (default: the JSON's folder). A missing
    ``validation`` list gives ``[]`` (the caller then splits one off the training list).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"datalist {path} not found; set data.datalist to an existing JSON file")
    from ..safeload import load_json_text
    from .checks import check_regular

    try:
        doc = load_json_text(path.read_text(), f"datalist {path}", DataError)  # bounded nesting
    except OSError as exc:
        raise DataError(f"datalist {path} cannot be read ({exc.strerror}); fix the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("training"), list):
        raise DataError(f'datalist {path} has no "training" list; expected {{"training": [{{"image": ..., '
                        '"label": ...}], "validation": [...]}')
    base = Path(base_dir) if base_dir is not None else path.parent
    out = []
    for key in ("training", "validation"):
        items = []
        for i, entry in enumerate(doc.get(key) or []):
            if not isinstance(entry, dict) or "image" not in entry:
                raise DataError(f'datalist {path}: {key}[{i}] must be {{"image": ..., "label": ...}}, got {entry!r:.60}')
            item = {}
            for k in ("image", "label"):
                if k not in entry:
                    continue
                if not isinstance(entry[k], str):
                    raise DataError(f"datalist {path}: {key}[{i}].{k} must be one path, got {entry[k]!r:.60}")
                p = Path(entry[k]) if Path(entry[k]).is_absolute() else base / entry[k]
                if not p.exists():
                    raise DataError(f"datalist {path}: {key}[{i}].{k} file {entry[k]} not found (looked at {p}); "
                                    "fix the path or data.base_dir")
                check_regular(p)  # never a device or FIFO (e.g. a datalist pointing at /dev/zero)
                item[k] = str(p.resolve())
            items.append(item)
        out.append(items)
    return out[0], out[1]


def split_off_validation(items: list[FileItem], fraction: float, seed: int) -> tuple[list[FileItem], list[FileItem]]:
    """A seeded random ``fraction`` of ``items`` (at least one) for validation; the rest trains."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1, got {fraction}")
    if len(items) < 2:
        raise DataError(f"only {len(items)} training item(s) and no validation list; add a \"validation\" list "
                        "to the datalist or more image/label pairs")
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = max(1, math.floor(len(items) * fraction))
    val = sorted(order[:n_val].tolist())
    return [items[i] for i in range(len(items)) if i not in val], [items[i] for i in val]
