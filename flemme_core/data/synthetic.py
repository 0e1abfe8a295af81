"""Generated shapes-with-noise datasets: no dependency, deterministic by seed.

Used by the unit tests and quick demos. Class ``k`` (1..num_classes-1) is a disk/sphere
for odd ``k`` and a square/cube for even ``k``, drawn with its own intensity, so a model
must use both shape and intensity; Gaussian noise is added on top. Held-out items are
generated after the training items from the same seeded stream, so they are different
images, never crops of training ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .splits import DatasetSplits, Item

#: bound on the generated voxels (all images, all channels): 2**28 float32 values are 1 GiB.
MAX_VOXELS = 2**28


def _shape_mask(grid: list[np.ndarray], centre: np.ndarray, radius: float, ball: bool) -> np.ndarray:
    if ball:
        d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
        return d2 <= radius**2
    inside = np.ones(grid[0].shape, dtype=bool)
    for g, c in zip(grid, centre):
        inside &= np.abs(g - c) <= radius
    return inside


def _item(rng: np.random.Generator, size: tuple[int, ...], num_classes: int, channels: int,
          noise: float, max_shapes: int) -> Item:
    grid = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij"))
    label = np.zeros(size, dtype=np.int64)
    smallest = min(size)
    for _ in range(int(rng.integers(2, max_shapes + 1))):
        k = int(rng.integers(1, num_classes))
        radius = float(rng.uniform(0.08, 0.2) * smallest)
        centre = np.array([rng.uniform(radius, s - 1 - radius) for s in size])
        label[_shape_mask(grid, centre, radius, ball=k % 2 == 1)] = k
    levels = np.linspace(0.0, 1.0, num_classes, dtype=np.float32)
    clean = levels[label]
    image = np.stack([clean + rng.normal(0.0, noise, size).astype(np.float32) for _ in range(channels)])
    return {"image": image.astype(np.float32), "label": label[None]}


def make_synthetic(dims: int, size: Sequence[int] | None = None, num_train: int = 8, num_held_out: int = 2,
                   num_classes: int = 3, channels: int = 1, noise: float = 0.2, max_shapes: int = 5,
                   seed: int = 0) -> DatasetSplits:
    """``num_train`` + ``num_held_out`` independent images of ``size`` with shapes and noise."""
    counts = {"num_train": num_train, "num_held_out": num_held_out, "num_classes": num_classes,
              "channels": channels, "max_shapes": max_shapes, "seed": seed}
    size = (64,) * dims if size is None else size
    for key, value in {**counts, **{f"size[{i}]": v for i, v in enumerate(size if isinstance(size, (list, tuple))
                                                                           else [size])}}.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"synthetic-{dims}d option {key} must be an integer, got {value!r:.40}")
    if not isinstance(size, (list, tuple)) or not isinstance(noise, (int, float)) or isinstance(noise, bool):
        raise ConfigError(f"synthetic-{dims}d: size must be a list of {dims} integers and noise a number "
                          f"(got size {size!r:.40}, noise {noise!r:.40})")
    size = tuple(size)
    voxels = (num_train + num_held_out) * channels * int(np.prod(size, dtype=np.float64)) if size else 0
    if voxels > MAX_VOXELS or num_classes > 255 or channels > 64 or max_shapes > 1000:
        raise ConfigError(f"synthetic-{dims}d options ask for {voxels:.3g} voxels ({num_train}+{num_held_out} images "
                          f"of {list(size)} x {channels} channel(s)), {num_classes} classes, {max_shapes} shapes; the "
                          f"limits are {MAX_VOXELS:.3g} voxels, 255 classes, 64 channels, 1000 shapes: use fewer or "
                          "smaller images")
    if len(size) != dims:
        raise ConfigError(f"synthetic-{dims}d: size {list(size)} must have {dims} numbers; e.g. size: {[32] * dims}")
    if num_classes < 2 or num_train < 1 or num_held_out < 1 or min(size) < 8:
        raise ConfigError(f"synthetic-{dims}d: need num_classes >= 2, num_train >= 1, num_held_out >= 1 and "
                          f"sizes >= 8 (got {num_classes}, {num_train}, {num_held_out}, {list(size)})")
    rng = np.random.default_rng(seed)
    items = [_item(rng, size, num_classes, channels, noise, max_shapes) for _ in range(num_train + num_held_out)]
    names = ["background"] + [f"{'disk' if k % 2 else 'square'}-{k}" if dims == 2 else
                              f"{'sphere' if k % 2 else 'cube'}-{k}" for k in range(1, num_classes)]
    patch = tuple(min(s, 32 if dims == 3 else 64) for s in size)
    return DatasetSplits(
        name=f"synthetic-{dims}d", train=items[:num_train], held_out=items[num_train:],
        num_classes=num_classes, dims=dims, task="segmentation", spacing=(1.0,) * dims,
        held_out_description=f"{num_held_out} separately generated images (seed {seed})",
        class_names=names, patch_size=patch, source="generated by flemme_core.data.synthetic",
    )


def synthetic_2d(size: Sequence[int] = (64, 64), num_train: int = 8, num_held_out: int = 2,
                 num_classes: int = 3, channels: int = 1, noise: float = 0.2, max_shapes: int = 5,
                 seed: int = 0) -> DatasetSplits:
    """2D disks and squares with noise (64x64 by default)."""
    return make_synthetic(2, size, num_train, num_held_out, num_classes, channels, noise, max_shapes, seed)


def synthetic_3d(size: Sequence[int] = (32, 32, 32), num_train: int = 4, num_held_out: int = 2,
                 num_classes: int = 3, channels: int = 1, noise: float = 0.2, max_shapes: int = 5,
                 seed: int = 0) -> DatasetSplits:
    """3D spheres and cubes with noise (32^3 by default)."""
    return make_synthetic(3, size, num_train, num_held_out, num_classes, channels, noise, max_shapes, seed)
