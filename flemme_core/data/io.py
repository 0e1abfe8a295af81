"""Reading one image for ``flemme predict`` and writing its prediction on the same grid.

Images are read through MONAI's ``LoadImage`` (the reader the training pipeline uses,
so arrays are in the same axis order: note that MONAI's PIL reader returns PNG/JPG as
(width, height)), channels first. Predictions are written back so that they overlay
the input: NIfTI keeps the input's affine and header, PNG/JPG inputs give a PNG
oriented like the input.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ShapeError
from .errors import DataError
from .sources import stem

PIL_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@contextlib.contextmanager
def quiet_readers() -> Iterator[None]:
    """Hide MONAI's 'nvImageCodec ... falling back to pydicom' warning (printed whenever pydicom is
    installed without the GPU codec; the fallback is what we want)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        yield


@dataclass
class ImageFile:
    """An image as the model sees it, plus what is needed to write a prediction over it."""

    path: Path
    #: (C, *spatial) float32, in MONAI's axis order (PIL images are (C, W, H)).
    array: np.ndarray
    #: 4x4 voxel-to-world (RAS) affine; identity for PNG/JPG.
    affine: np.ndarray
    spacing: tuple[float, ...]
    #: 'nifti', 'pil' (PNG/JPG/...), or another MONAI reader's format (nrrd, dicom, ...).
    format: str
    meta: dict[str, Any] = field(default_factory=dict)


def _format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(PIL_FORMATS):
        return "pil"
    if path.is_dir():
        return "dicom"
    return name.rsplit(".", 1)[-1] if "." in name else "unknown"


def read_image(path: str | Path) -> ImageFile:
    """Read an image file or a DICOM series folder with MONAI, channels first, keeping its affine."""
    from monai.transforms import LoadImage

    path = Path(path)
    if not path.exists():
        raise DataError(f"image {path} not found; check the path")
    try:
        with quiet_readers():
            img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as exc:  # any reader failure is a bad-input message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read image {path}: {first[:200]}; convert it to NIfTI or PNG, or install "
                        "the reader (pip install 'flemme-core[data]')") from exc
    affine = np.asarray(img.affine, dtype=np.float64)
    dims = img.ndim - 1
    spacing = tuple(float(np.linalg.norm(affine[:dims, i])) for i in range(dims)) if affine.shape[0] > dims else ()
    return ImageFile(path=path, array=np.asarray(img, dtype=np.float32), affine=affine, spacing=spacing,
                     format=_format(path), meta=dict(img.meta))


def output_path_for(input_path: str | Path, out_dir: str | Path, suffix: str = "_pred") -> Path:
    """Where to write the prediction of ``input_path``: NIfTI for volumes, PNG for PNG/JPG inputs."""
    input_path = Path(input_path)
    ext = ".png" if _format(input_path) == "pil" else ".nii.gz"
    return Path(out_dir) / f"{stem(input_path)}{suffix}{ext}"


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def write_prediction(prediction: Any, out_path: str | Path, like: ImageFile) -> Path:
    """Write ``prediction`` ((C, *S) or (*S), numpy or tensor) over the grid of ``like``.

    Integer predictions (class indices) keep their values; float ones are written as
    float32 in NIfTI and scaled to 0..255 in PNG. Returns the written path.
    """
    pred = _to_numpy(prediction)
    spatial = like.array.shape[1:]
    if pred.shape == spatial:
        pred = pred[None]
    if pred.shape[1:] != spatial:
        raise ShapeError(f"prediction of shape {tuple(pred.shape)} does not match the input {like.path.name} "
                         f"of spatial shape {tuple(spatial)}; predict on the whole image (sliding window)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.name.lower().endswith(PIL_FORMATS):
        _write_pil(pred, out_path)
    elif out_path.name.lower().endswith((".nii", ".nii.gz")):
        _write_nifti(pred, out_path, like)
    else:
        raise DataError(f"cannot write {out_path.name}: use a .nii.gz or .png output name")
    return out_path


def _write_nifti(pred: np.ndarray, out_path: Path, like: ImageFile) -> None:
    import nibabel as nib

    data = pred[0] if pred.shape[0] == 1 else np.moveaxis(pred, 0, -1)  # channels last in NIfTI
    data = data.astype(np.int16 if np.issubdtype(data.dtype, np.integer) or data.dtype == bool else np.float32)
    header = None
    if like.format == "nifti":
        header = nib.load(str(like.path)).header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(data, like.affine, header=header)
    img.set_qform(like.affine, code=1)
    img.set_sform(like.affine, code=1)
    nib.save(img, str(out_path))


def _write_pil(pred: np.ndarray, out_path: Path) -> None:
    from PIL import Image

    if pred.ndim != 3:
        raise ShapeError(f"a {pred.ndim - 1}D prediction cannot be written as {out_path.suffix}; use .nii.gz")
    if np.issubdtype(pred.dtype, np.integer) or pred.dtype == bool:
        data = pred.astype(np.uint8 if pred.max(initial=0) < 256 else np.uint16)
    else:
        lo, hi = float(pred.min()), float(pred.max())
        lo, hi = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
        data = np.round(255 * (pred - lo) / max(hi - lo, 1e-8)).astype(np.uint8)
    data = np.swapaxes(data, 1, 2)  # MONAI's PIL reader gives (C, W, H): back to rows x columns
    if data.shape[0] == 1:
        Image.fromarray(data[0]).save(str(out_path))
    elif data.shape[0] == 3 and data.dtype == np.uint8:
        Image.fromarray(np.moveaxis(data, 0, -1)).save(str(out_path))
    else:
        raise ShapeError(f"a {data.shape[0]}-channel prediction cannot be written as PNG; write class indices "
                         "(argmax) or use .nii.gz")
