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
#: formats whose compression changes pixel values: never used for label maps.
LOSSY_FORMATS = (".jpg", ".jpeg")


@contextlib.contextmanager
def quiet_readers() -> Iterator[None]:
    """Hide MONAI's 'nvImageCodec is not available' notice (a warning and a log line, printed on
    every image load whenever pydicom is installed without the GPU codec; the CPU fallback is
    what we want). ``FLEMME_DEBUG=1`` shows it."""
    import logging
    import os

    if os.environ.get("FLEMME_DEBUG"):
        yield
        return
    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            yield
    finally:
        logger.setLevel(level)


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

    Integer predictions (class indices) keep their values: NIfTI int16, or a palette PNG
    (pixel values are the class indices, shown in distinct colours by every viewer); a lossy
    format (JPEG) is refused for them. Float ones are written as float32 in NIfTI and scaled
    to 0..255 in PNG. Returns the written path.
    """
    pred = _to_numpy(prediction)
    spatial = like.array.shape[1:]
    if pred.shape == spatial:
        pred = pred[None]
    if pred.shape[1:] != spatial:
        raise ShapeError(f"prediction of shape {tuple(pred.shape)} does not match the input {like.path.name} "
                         f"of spatial shape {tuple(spatial)}; predict on the whole image (sliding window)")
    out_path = Path(out_path)
    labels = np.issubdtype(pred.dtype, np.integer) or pred.dtype == bool
    if labels and out_path.name.lower().endswith(LOSSY_FORMATS):
        raise DataError(f"cannot write a label map as {out_path.name}: JPEG is lossy and would change class "
                        "indices (and invent classes at edges); use .png (palette, indices kept) or .nii.gz")
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
    qcode, scode = 1, 1  # scanner-anat unless the input says otherwise
    if header is not None:  # keep the input's codes (e.g. sform 2 = aligned to another scan, 4 = MNI)
        qcode = int(header["qform_code"]) or qcode
        scode = int(header["sform_code"]) or scode
    img.set_qform(like.affine, code=qcode)
    img.set_sform(like.affine, code=scode)
    nib.save(img, str(out_path))


def label_palette(n: int = 256) -> list[int]:
    """RGB triples for class indices: 0 black (background), then well-separated colours."""
    base = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
            (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
            (255, 215, 180), (0, 0, 128), (128, 128, 128)]
    colours = [base[k] if k < len(base) else ((k * 67) % 256, (k * 151) % 256, (k * 223) % 256) for k in range(n)]
    return [c for rgb in colours for c in rgb]


def _write_pil(pred: np.ndarray, out_path: Path) -> None:
    from PIL import Image

    if pred.ndim != 3:
        raise ShapeError(f"a {pred.ndim - 1}D prediction cannot be written as {out_path.suffix}; use .nii.gz")
    if np.issubdtype(pred.dtype, np.integer) or pred.dtype == bool:
        if pred.shape[0] != 1 or pred.max(initial=0) > 255:
            raise ShapeError(f"a label map with classes up to {int(pred.max(initial=0))} cannot be a palette PNG "
                             "(256 colours); use .nii.gz")
        data = np.swapaxes(pred.astype(np.uint8), 1, 2)[0]  # MONAI's PIL reader gives (W, H): back to rows
        image = Image.fromarray(data)
        image.putpalette(label_palette())  # L -> P: the indices stay, the palette gives the colours
        image.save(str(out_path))
        return
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
