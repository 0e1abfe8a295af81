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
    """Pair files (or DICOM series folders) of two folders by matching stems, sorted by stem.

    nnU-Net's raw layout names single-channel images ``case_0000`` beside the label ``case``:
    that channel suffix is matched too; several channels (``_0001``) are refused in one line.
    """
    imgs, labs = _entries(Path(images), "images"), _entries(Path(labels), "labels")
    if imgs and all(k not in labs for k in imgs) and all(k[-5:-4] == "_" and k[-4:].isdigit() for k in imgs):
        channels = sorted({k[-4:] for k in imgs})
        if channels != ["0000"]:
            raise DataError(f"{images} holds nnU-Net images with {len(channels)} channels (_{', _'.join(channels)}); "
                            "flemme reads one file per image: merge the channels into one multi-channel file")
        imgs = {k[:-5]: v for k, v in imgs.items()}
    if not imgs:
        raise DataError(f"no image files in {images} (looked for {', '.join(IMAGE_SUFFIXES[:8])}, ... or DICOM "
                        "series folders); put the images there or fix data.images")
    missing = sorted(set(imgs) - set(labs))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"no label in {labels} for image(s) {shown} (labels are matched to images by file stem); "
                        "add the label files or remove those images")
    return [{"image": str(imgs[k].resolve()), "label": str(labs[k].resolve())} for k in sorted(imgs)]


def declared_labels(path: str | Path) -> list[str]:
    """Class names, background first, from a Decathlon/nnU-Net ``dataset.json``'s ``labels``
    (Decathlon: ``{"0": "background", "1": "edema"}``; nnU-Net v2: ``{"background": 0, "edema": 1}``;
    region labels, lists of values, are not classes); ``[]`` when it declares none."""
    from ..safeload import load_json_text

    try:
        doc = load_json_text(Path(path).read_text(), f"datalist {path}", DataError)
    except (OSError, DataError):
        return []
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(labels, dict) or not labels:
        return []
    pairs = []
    for key, value in labels.items():
        index, name = (key, value) if str(key).strip().isdigit() else (value, key)
        if not (isinstance(index, int) or str(index).strip().isdigit()):
            return []
        pairs.append((int(index), str(name)))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        return []  # not 0..K-1: count from the label files instead
    return [name for _, name in pairs]


def data_argument(value: str, presets: list[str]) -> dict[str, str]:
    """``--data``: a preset name, a datalist JSON, ``IMAGES:LABELS`` folders, or a Decathlon /
    nnU-Net raw folder (``dataset.json`` with a ``training`` list, or ``imagesTr/`` + ``labelsTr/``).
    Anything else is one line saying it is neither a preset nor a usable folder."""
    from ..errors import unknown_name_message

    if value.endswith(".json"):
        return {"datalist": value}
    if ":" in value:
        images, labels = value.split(":", 1)
        return {"images": images, "labels": labels}
    folder = Path(value)
    if folder.is_dir():
        listed = folder / "dataset.json"
        if listed.is_file() and '"training"' in listed.read_text(errors="replace")[:1_000_000]:
            return {"datalist": str(listed)}
        if (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir():
            return {"images": str(folder / "imagesTr"), "labels": str(folder / "labelsTr")}
        raise DataError(f"--data {value}: the folder is not a dataset (no dataset.json with a training list, no "
                        "imagesTr/ + labelsTr/); give IMAGES:LABELS folders, a datalist .json or a preset")
    if value in presets:
        return {"preset": value}
    hint = unknown_name_message("dataset preset", value, presets, "see `flemme list datasets`")
    raise DataError(f"--data {value!r} is neither a dataset preset nor a folder (no folder {folder} exists): "
                    f"{hint}; or give a data folder (IMAGES:LABELS, a datalist .json, a Decathlon/nnU-Net folder)")


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
