"""What a dataset preset returns: training items and held-out items, already split.

Items are plain dicts of numpy arrays, channels first: ``{"image": (C, *S) float32,
"label": (1, *S) int}`` (image-only presets for reconstruction have no ``label``).
3D volumes are kept whole; the trainer crops patches and runs sliding-window
inference on the held-out items, which never overlap the training region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Item = dict[str, np.ndarray]


@dataclass
class DatasetSplits:
    """A preset's data: disjoint training and held-out items plus what the trainer needs to know."""

    name: str
    train: list[Item]
    held_out: list[Item]
    #: number of label classes including background; 0 for image-only (reconstruction) sets.
    num_classes: int
    dims: int
    #: one line saying what is held out (goes into every results table).
    held_out_description: str
    task: str = "segmentation"
    spacing: tuple[float, ...] = ()
    #: 4x4 voxel-to-world affine of the source volume (None for 2D images without one).
    affine: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    #: a patch size that fits every training item (used when the config gives none).
    patch_size: tuple[int, ...] | None = None
    #: where the data comes from and its licence, for the README and result tables.
    source: str = ""
    #: where each item lies in the source array, parallel to ``train`` / ``held_out``:
    #: ``{"box": [[start, stop], ...]}`` per source axis and/or ``{"z": index}`` for a slice.
    train_where: list[dict] = field(default_factory=list)
    held_out_where: list[dict] = field(default_factory=list)
    #: what the factory did to the source images' intensities, as steps
    #: (:mod:`flemme_core.data.preprocessing`, e.g. ``linear(mean, std)`` with whole-image
    #: statistics): stored in every checkpoint trained on the preset, so that ``flemme predict``
    #: reads a raw image exactly as training saw it. Empty: items are the raw images.
    preprocessing: list[dict] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return int(self.train[0]["image"].shape[0]) if self.train else 0

    def summary(self) -> str:
        """One line: name, item counts and shapes, classes and what is held out."""
        def shapes(items: list[Item]) -> str:
            s = sorted({tuple(it["image"].shape[1:]) for it in items})
            return ", ".join("x".join(map(str, x)) for x in s[:3]) + (" ..." if len(s) > 3 else "")

        return (f"{self.name}: {len(self.train)} train ({shapes(self.train)}), {len(self.held_out)} held out "
                f"({shapes(self.held_out)}), {self.num_classes} classes; held out: {self.held_out_description}")
