"""The built-in dataset presets, as lazy registrations (import-cheap: no numpy/torch/monai).

``flemme_core.builtin`` calls :func:`register_presets` from its ``register_datasets``
hook implementation; each factory is a ``"module:attr"`` string imported only when a
preset is loaded, so ``flemme list`` never imports nilearn, stardist or torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MODULE = "flemme_core.data.presets"
_SYNTH = _MODULE  # synthetic factories are re-exported by presets

#: name -> (factory, description, metadata). Descriptions say what is held out.
PRESETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mni152-tissue-3d": (
        f"{_MODULE}:mni152_tissue_3d",
        ("MNI152 2009a T1 (nilearn), 4-class tissue (bg/CSF/GM/WM); train posterior half, "
        "evaluate anterior half (cut at the brain mask's mid-y)"),
        {"dims": 3, "task": "segmentation", "num_classes": 4, "requires": "nilearn"},
    ),
    "mni152-tissue-2d": (
        f"{_MODULE}:mni152_tissue_2d",
        ("MNI152 2009a T1 axial slices (nilearn), 4-class tissue; posterior half of each slice "
        "trains, anterior half evaluates"),
        {"dims": 2, "task": "segmentation", "num_classes": 4, "requires": "nilearn"},
    ),
    "stardist-nuclei-2d": (
        f"{_MODULE}:stardist_nuclei_2d",
        ("stardist 2D fluorescence nuclei 512x512, foreground vs background; train on 3 "
        "quadrants, evaluate on the bottom-right one"),
        {"dims": 2, "task": "segmentation", "num_classes": 2, "requires": "stardist"},
    ),
    "stardist-nuclei-3d": (
        f"{_MODULE}:stardist_nuclei_3d",
        "stardist 3D nuclei 31x61x57, foreground vs background; train on y < 40, evaluate on y >= 40",
        {"dims": 3, "task": "segmentation", "num_classes": 2, "requires": "stardist"},
    ),
    "colin27-aal-2d": (
        f"{_MODULE}:colin27_aal_2d",
        ("Colin27 T1 axial slices with the 116-region AAL atlas (Debian mricron-data), 117 classes; "
        "train z mod 10 in 0..6, evaluate z mod 10 == 8; options: {subsample: 2}: whole slices at 2x "
        "in-plane subsampling (every 2nd voxel, 2 mm), padded with background to 96x128"),
        {"dims": 2, "task": "segmentation", "num_classes": 117, "requires": "mricron-data (apt)"},
    ),
    "colin27-t1-2d": (
        f"{_MODULE}:colin27_t1_2d",
        ("Colin27 T1 axial slices, image only, scaled to [0, 1] (MNI152 1 mm if mricron-data is "
        "absent); train z mod 10 in 0..6, evaluate z mod 10 == 8"),
        {"dims": 2, "task": "reconstruction", "num_classes": 0, "requires": "mricron-data or nilearn"},
    ),
    "synthetic-2d": (
        f"{_SYNTH}:synthetic_2d",
        ("generated 2D disks and squares with noise (deterministic by seed); held-out images are "
        "generated separately"),
        {"dims": 2, "task": "segmentation", "num_classes": 3, "requires": ""},
    ),
    "synthetic-3d": (
        f"{_SYNTH}:synthetic_3d",
        ("generated 3D spheres and cubes with noise (deterministic by seed); held-out volumes are "
        "generated separately"),
        {"dims": 3, "task": "segmentation", "num_classes": 3, "requires": ""},
    ),
}


def register_presets(register: Callable[..., Any]) -> None:
    """Register every built-in preset through a ``register_datasets`` hook's ``register``."""
    for name, (factory, description, metadata) in PRESETS.items():
        register(name, factory, description=description, **metadata)
