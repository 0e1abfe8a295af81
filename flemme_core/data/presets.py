"""Factories of the built-in dataset presets: real images shipped by packages, split honestly.

Every factory returns a :class:`~flemme_core.data.splits.DatasetSplits` whose training
and held-out items come from disjoint regions (see ``shared/data.md``):

* MNI152 (nilearn): the template is exactly left-right symmetric, so it is split along
  the anterior-posterior axis at the middle of the brain mask's y-extent (posterior
  half trains, anterior half evaluates), never left/right.
* stardist nuclei: 2D trains on three 256x256 quadrants and evaluates on the
  bottom-right one; 3D trains on y < 40 and evaluates on y >= 40 (the longest axis).
* Colin27 (Debian ``mricron-data``): axial slices with z mod 10 in 0..6 train,
  z mod 10 == 8 evaluates (7 and 9 are guard bands).

Optional packages are imported inside the factories; a missing one is a one-line
:class:`DataError` saying what to install. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .preprocessing import linear
from .splits import DatasetSplits, Item
from .synthetic import synthetic_2d, synthetic_3d  # noqa: F401 - registered as presets:synthetic_*

MRICRON_DIR = Path("/usr/share/mricron/templates")
TISSUE_CLASSES = ["background", "CSF", "GM", "WM"]
NILEARN_SOURCE = "MNI152 ICBM 2009a nonlinear symmetric template via nilearn (BSD-3; template (c) McConnell Brain Imaging Centre)"
STARDIST_SOURCE = "stardist test images (BSD-3, stardist.data)"
COLIN_SOURCE = "Colin27 (ch2) and AAL atlas via Debian mricron-data (BSD-like mricron licence; AAL: Tzourio-Mazoyer 2002)"


def _need(module: str, preset: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DataError(f"preset {preset!r} needs {module.split('.')[0]} ({exc}); install it with: {install}") from exc


def zscore_in_mask(image: np.ndarray, mask: np.ndarray, what: str = "mask") -> tuple[np.ndarray, dict]:
    """(image - mean) / std with the statistics of the voxels inside ``mask`` (applied everywhere),
    and that step with its constants (for ``flemme predict``)."""
    inside = image[mask]
    mean, std = float(inside.mean()), max(float(inside.std()), 1e-8)
    step = linear(mean, std, why=f"z-score with the mean/std inside the {what} of the whole source volume")
    return ((image - mean) / std).astype(np.float32), step


def percentile_scale(image: np.ndarray, lower: float = 1.0, upper: float = 99.8) -> tuple[np.ndarray, dict]:
    """Map the ``lower``/``upper`` percentiles of the whole image to 0/1 (no clipping), as stardist does,
    and that step with its constants."""
    lo, hi = (float(v) for v in np.percentile(image, [lower, upper]))
    step = linear(lo, max(hi - lo, 1e-8), why=f"percentiles {lower}-{upper} of the whole source image -> 0..1")
    return ((image.astype(np.float32) - lo) / max(hi - lo, 1e-8)).astype(np.float32), step


# -- MNI152 ---------------------------------------------------------------------------
def _mni152(resolution: int, preset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """z-scored T1, tissue labels (0 bg, 1 CSF, 2 GM, 3 WM), brain mask, affine and the z-score step."""
    if resolution not in (1, 2):
        from ..errors import ConfigError

        raise ConfigError(f"{preset}: resolution must be 1 or 2 (mm), got {resolution!r}")
    datasets = _need("nilearn.datasets", preset, "pip install 'flemme-core[data]' (or pip install nilearn)")
    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata() > 0.5
    csf = np.clip(mask.astype(np.float64) - gm - wm, 0.0, None)
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0) + 1
    label = np.where(mask, tissue, 0).astype(np.int64)
    image, step = zscore_in_mask(t1.get_fdata(), mask, "brain mask")
    return image, label, mask, np.asarray(t1.affine), step


def _posterior_first(affine: np.ndarray) -> tuple[int, bool]:
    """The array axis that runs anterior-posterior, and whether low indices are posterior."""
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    axis = next(i for i, c in enumerate(codes) if c in ("A", "P"))
    return axis, codes[axis] == "A"


def _ap_halves(image: np.ndarray, label: np.ndarray, mask: np.ndarray, affine: np.ndarray
               ) -> tuple[tuple[slice, ...], tuple[slice, ...], int, int]:
    """Index tuples of the posterior and anterior halves, the cut index and the A-P axis."""
    axis, low_is_posterior = _posterior_first(affine)
    other = tuple(i for i in range(mask.ndim) if i != axis)
    extent = np.where(mask.any(axis=other))[0]
    cut = round(float(extent.min() + extent.max() + 1) / 2)
    low = [slice(None)] * mask.ndim
    high = [slice(None)] * mask.ndim
    low[axis], high[axis] = slice(0, cut), slice(cut, None)
    post, ant = (low, high) if low_is_posterior else (high, low)
    return tuple(post), tuple(ant), cut, axis


def _box(region: tuple[slice, ...], shape: tuple[int, ...]) -> list[list[int]]:
    return [list(sl.indices(n)[:2]) for sl, n in zip(region, shape)]


def mni152_tissue_3d(resolution: int = 2) -> DatasetSplits:
    """MNI152 T1 volume, 4-class tissue labels; posterior half trains, anterior half is held out."""
    image, label, mask, affine, step = _mni152(resolution, "mni152-tissue-3d")
    post, ant, cut, axis = _ap_halves(image, label, mask, affine)
    train = [{"image": image[post][None].copy(), "label": label[post][None].copy()}]
    held = [{"image": image[ant][None].copy(), "label": label[ant][None].copy()}]
    return DatasetSplits(
        name="mni152-tissue-3d", train=train, held_out=held, num_classes=4, dims=3, task="segmentation",
        spacing=(float(resolution),) * 3, affine=affine, class_names=TISSUE_CLASSES,
        held_out_description=(f"anterior half of MNI152 {resolution} mm (array axis {axis} index >= {cut}, "
                              f"the middle of the brain mask's extent); trained on the posterior half"),
        patch_size=(64, 48, 64) if resolution == 2 else (96, 96, 96), source=NILEARN_SOURCE,
        train_where=[{"box": _box(post, mask.shape)}], held_out_where=[{"box": _box(ant, mask.shape)}],
        preprocessing=[step],
    )


def mni152_tissue_2d(resolution: int = 2) -> DatasetSplits:
    """Axial slices (those with brain) of MNI152: posterior half of each slice trains, anterior half is held out."""
    image, label, mask, affine, step = _mni152(resolution, "mni152-tissue-2d")
    post, ant, cut, axis = _ap_halves(image, label, mask, affine)
    if axis != 1:  # nilearn's template is RAS; slicing below assumes (x, y, z)
        raise DataError(f"mni152-tissue-2d: expected the A-P axis to be array axis 1, found {axis}")
    slices = [z for z in range(mask.shape[2]) if mask[..., z].any()]

    def take(region: tuple[slice, ...]) -> list[Item]:
        return [{"image": image[region][None, :, :, z].copy(), "label": label[region][None, :, :, z].copy()}
                for z in slices]

    return DatasetSplits(
        name="mni152-tissue-2d", train=take(post), held_out=take(ant), num_classes=4, dims=2,
        task="segmentation", spacing=(float(resolution),) * 2, affine=affine, class_names=TISSUE_CLASSES,
        held_out_description=(f"anterior half (y index >= {cut}) of {len(slices)} axial slices of MNI152 "
                              f"{resolution} mm; trained on the posterior halves of the same slices"),
        patch_size=(96, 48) if resolution == 2 else (192, 96), source=NILEARN_SOURCE,
        train_where=[{"box": _box(post, mask.shape)[:2], "z": z} for z in slices],
        held_out_where=[{"box": _box(ant, mask.shape)[:2], "z": z} for z in slices],
        preprocessing=[step],
    )


# -- stardist ---------------------------------------------------------------------------
def _stardist(kind: str, preset: str) -> tuple[np.ndarray, np.ndarray, dict]:
    data = _need("stardist.data", preset, "pip install 'flemme-core[data]' (or pip install stardist)")
    image, mask = getattr(data, f"test_image_nuclei_{kind}")(return_mask=True)
    scaled, step = percentile_scale(np.asarray(image), 1.0, 99.8)
    return scaled, (np.asarray(mask) > 0).astype(np.int64), step


def stardist_nuclei_2d() -> DatasetSplits:
    """512x512 nuclei, foreground = mask > 0; three 256x256 quadrants train, the bottom-right is held out."""
    image, label, step = _stardist("2d", "stardist-nuclei-2d")
    h, w = image.shape[0] // 2, image.shape[1] // 2
    quads = {"top-left": (slice(0, h), slice(0, w)), "top-right": (slice(0, h), slice(w, None)),
             "bottom-left": (slice(h, None), slice(0, w)), "bottom-right": (slice(h, None), slice(w, None))}
    items = {k: {"image": image[q][None].copy(), "label": label[q][None].copy()} for k, q in quads.items()}
    return DatasetSplits(
        name="stardist-nuclei-2d", train=[items["top-left"], items["top-right"], items["bottom-left"]],
        held_out=[items["bottom-right"]], num_classes=2, dims=2, task="segmentation", spacing=(1.0, 1.0),
        class_names=["background", "nucleus"], patch_size=(128, 128), source=STARDIST_SOURCE,
        train_where=[{"box": _box(quads[k], image.shape)} for k in ("top-left", "top-right", "bottom-left")],
        held_out_where=[{"box": _box(quads["bottom-right"], image.shape)}], preprocessing=[step],
        held_out_description=(f"bottom-right {h}x{w} quadrant (rows >= {h}, cols >= {w}) of the 2D nuclei "
                              "image; trained on the other three quadrants"),
    )


def stardist_nuclei_3d(cut: int = 40) -> DatasetSplits:
    """31x61x57 (z, y, x) nuclei volume, foreground = mask > 0; y < ``cut`` trains, y >= ``cut`` is held out."""
    image, label, step = _stardist("3d", "stardist-nuclei-3d")
    if not 16 <= cut <= image.shape[1] - 8:
        raise DataError(f"stardist-nuclei-3d: cut {cut} leaves too little data; use 16..{image.shape[1] - 8}")
    train = [{"image": image[None, :, :cut].copy(), "label": label[None, :, :cut].copy()}]
    held = [{"image": image[None, :, cut:].copy(), "label": label[None, :, cut:].copy()}]
    return DatasetSplits(
        name="stardist-nuclei-3d", train=train, held_out=held, num_classes=2, dims=3, task="segmentation",
        spacing=(1.0, 1.0, 1.0), class_names=["background", "nucleus"], patch_size=(16, 32, 32),
        source=STARDIST_SOURCE, train_where=[{"box": [[0, image.shape[0]], [0, cut], [0, image.shape[2]]]}],
        held_out_where=[{"box": [[0, image.shape[0]], [cut, image.shape[1]], [0, image.shape[2]]]}],
        preprocessing=[step],
        held_out_description=(f"y >= {cut} slab ({image.shape[0]}x{image.shape[1] - cut}x{image.shape[2]}) of the "
                              f"3D nuclei volume (axes z, y, x); trained on y < {cut}"),
    )


# -- Colin27 ----------------------------------------------------------------------------
def _colin_file(name: str, preset: str) -> Any:
    import nibabel as nib

    path = MRICRON_DIR / name
    if not path.exists():
        raise DataError(f"preset {preset!r} needs {path} from the Debian package mricron-data; install it with: "
                        "apt-get install mricron-data")
    return nib.load(str(path))


def _z_split(num_slices: int, keep: list[int]) -> tuple[list[int], list[int]]:
    """z mod 10 in 0..6 trains, z mod 10 == 8 is held out (7 and 9 are guard bands)."""
    zs = [z for z in keep if z < num_slices]
    return [z for z in zs if z % 10 <= 6], [z for z in zs if z % 10 == 8]


#: whole subsampled slices are padded with background to a multiple of this (every encoder's stride)
SLICE_MULTIPLE = 32


def colin27_aal_2d(skull_stripped: bool = True, subsample: int = 1) -> DatasetSplits:
    """Colin27 T1 axial slices with AAL labels remapped to 0..116 (z-scored inside the brain).

    ``subsample`` k > 1 keeps every k-th voxel along both in-plane axes (labels stay atlas
    labels, never averaged) and pads with background (the image's own background value,
    label 0) to a multiple of 32, so that a whole slice is one patch for any encoder: 2 gives
    the "whole axial slices at 2x in-plane subsampling" of the issue-15 protocol, 96x128 at
    2 mm. The z split is unchanged.
    """
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise DataError(f"colin27-aal-2d: options.subsample must be a whole number >= 1 (2: every second voxel "
                        f"in-plane), got {subsample!r}")
    t1 = _colin_file("ch2bet.nii.gz" if skull_stripped else "ch2.nii.gz", "colin27-aal-2d")
    aal = _colin_file("aal.nii.gz", "colin27-aal-2d")
    raw = np.asarray(aal.dataobj).astype(np.int64)
    values = np.unique(raw)  # 0 plus the 116 region codes: map to 0..116 whatever the codes are
    label = np.searchsorted(values, raw).astype(np.int64)
    image = np.asarray(t1.dataobj).astype(np.float32)
    background = (image <= 0) & (label == 0)
    image, step = zscore_in_mask(image, ~background, "brain (image > 0 or labelled)")
    affine = np.asarray(t1.affine, dtype=np.float64)
    if subsample > 1:
        k = subsample
        image, label = _subsample_in_plane(image, k, float(image[background].max())), _subsample_in_plane(label, k, 0)
        affine = affine.copy()
        affine[:3, :2] *= k
        step = {**step, "why": step["why"] + f"; slices were also subsampled {k}x in-plane (every {k}th voxel) and "
                "padded with background: predict on such slices"}
    with_labels = [z for z in range(label.shape[2]) if label[..., z].any()]
    tr, ho = _z_split(label.shape[2], with_labels)

    def take(zs: list[int]) -> list[Item]:
        return [{"image": image[None, :, :, z].copy(), "label": label[None, :, :, z].copy()} for z in zs]

    names = ["background"] + _aal_names(len(values) - 1)
    return DatasetSplits(
        name="colin27-aal-2d", train=take(tr), held_out=take(ho), num_classes=len(values), dims=2,
        task="segmentation", spacing=(float(subsample),) * 2, affine=affine, class_names=names,
        patch_size=(128, 128) if subsample == 1 else tuple(label.shape[:2]), source=COLIN_SOURCE,
        train_where=[{"z": z} for z in tr], held_out_where=[{"z": z} for z in ho], preprocessing=[step],
        held_out_description=(f"{len(ho)} axial slices with z mod 10 == 8 of Colin27"
                              + (f" (whole, {subsample}x in-plane subsampled)" if subsample > 1 else "")
                              + f"; trained on {len(tr)} slices with z mod 10 in 0..6 (7 and 9 unused guard bands)"),
    )


def _subsample_in_plane(volume: np.ndarray, k: int, fill: float) -> np.ndarray:
    """Every ``k``-th voxel of the two in-plane axes (z untouched), padded at the far ends with
    ``fill`` to a multiple of :data:`SLICE_MULTIPLE`."""
    v = volume[::k, ::k]
    pad = [(0, -s % SLICE_MULTIPLE) for s in v.shape[:2]] + [(0, 0)]
    return np.pad(v, pad, constant_values=fill).astype(volume.dtype)


def _aal_names(n: int) -> list[str]:
    path = MRICRON_DIR / "aal.nii.txt"
    try:
        names = [line.split()[1] for line in path.read_text().splitlines() if len(line.split()) >= 2]
    except OSError:
        names = []
    return names if len(names) == n else [f"region-{k}" for k in range(1, n + 1)]


def _downsample_in_plane(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean the two in-plane axes by ``factor`` (z untouched), zero-padded to a multiple of 8."""
    x, y = (volume.shape[0] // factor) * factor, (volume.shape[1] // factor) * factor
    v = volume[:x, :y].reshape(x // factor, factor, y // factor, factor, -1).mean(axis=(1, 3))
    pad = [(0, -s % 8) for s in v.shape[:2]] + [(0, 0)]
    return np.pad(v, pad).astype(np.float32)


def colin27_t1_2d(fallback: bool = True, downsample: int = 1) -> DatasetSplits:
    """Image-only Colin27 T1 axial slices scaled to [0, 1] for reconstruction; MNI152 1 mm if absent.

    ``downsample`` > 1 block-averages each slice in-plane (4: 4 mm, 48×56 after padding) for
    small whole-slice models (generation); the z split is unchanged.
    """
    if (MRICRON_DIR / "ch2.nii.gz").exists() or not fallback:
        t1 = _colin_file("ch2.nii.gz", "colin27-t1-2d")
        volume, affine, what = np.asarray(t1.dataobj).astype(np.float32), np.asarray(t1.affine), "Colin27 ch2"
        source = COLIN_SOURCE
    else:
        datasets = _need("nilearn.datasets", "colin27-t1-2d",
                         "apt-get install mricron-data, or pip install 'flemme-core[data]' for the MNI152 fallback")
        t1 = datasets.load_mni152_template(resolution=1)
        volume, affine, what = t1.get_fdata().astype(np.float32), np.asarray(t1.affine), "MNI152 1 mm (fallback)"
        source = NILEARN_SOURCE
    hi = float(np.percentile(volume[volume > 0], 99.8))
    volume = np.clip(volume / max(hi, 1e-8), 0.0, 1.0).astype(np.float32)
    with_signal = [z for z in range(volume.shape[2]) if (volume[..., z] > 0.05).mean() > 0.02]
    tr, ho = _z_split(volume.shape[2], with_signal)
    note = ""
    if downsample > 1:
        volume = _downsample_in_plane(volume, int(downsample))
        note = f"; slices were also block-averaged {int(downsample)}x in-plane: predict on such slices"

    def take(zs: list[int]) -> list[Item]:
        return [{"image": volume[None, :, :, z].copy()} for z in zs]

    return DatasetSplits(
        name="colin27-t1-2d", train=take(tr), held_out=take(ho), num_classes=0, dims=2, task="reconstruction",
        spacing=(float(downsample),) * 2, affine=affine, patch_size=(128, 128) if downsample == 1 else None,
        source=source,
        train_where=[{"z": z} for z in tr], held_out_where=[{"z": z} for z in ho],
        preprocessing=[linear(0.0, max(hi, 1e-8), clip=[0.0, 1.0],
                              why=f"divided by the 99.8th percentile of the whole volume's non-zero voxels{note}")],
        held_out_description=(f"{len(ho)} axial slices with z mod 10 == 8 of {what}; trained on {len(tr)} slices "
                              "with z mod 10 in 0..6"),
    )
