"""Small synthetic files for the data-layer tests (NIfTI and PNG pairs, datalists)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flemme_core.data.synthetic import make_synthetic

AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 1.5, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def write_nifti_pairs(root: Path, n: int = 4, size=(24, 28, 20), affine=AFFINE, seed: int = 0) -> list[str]:
    """``root/images/case{i}.nii.gz`` and ``root/labels/case{i}.nii.gz``; returns the stems."""
    import nibabel as nib

    s = make_synthetic(3, size=size, num_train=n, num_held_out=1, seed=seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    stems = []
    for i, item in enumerate(s.train):
        nib.save(nib.Nifti1Image(item["image"][0], affine), str(root / "images" / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(item["label"][0].astype(np.uint8), affine), str(root / "labels" / f"case{i}.nii.gz"))
        stems.append(f"case{i}")
    return stems


def write_datalist(root: Path, stems: list[str], n_val: int = 1) -> Path:
    entries = [{"image": f"images/{s}.nii.gz", "label": f"labels/{s}.nii.gz"} for s in stems]
    path = root / "dataset.json"
    path.write_text(json.dumps({"training": entries[n_val:], "validation": entries[:n_val]}))
    return path


def write_png_pairs(root: Path, n: int = 3, size=(40, 56), seed: int = 0) -> None:
    from PIL import Image

    s = make_synthetic(2, size=size, num_train=n, num_held_out=1, seed=seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(s.train):
        Image.fromarray((np.clip(item["image"][0], 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(item["label"][0].astype(np.uint8)).save(root / "labels" / f"c{i}.png")
