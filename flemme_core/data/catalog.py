"""The built-in dataset presets, as lazy registrations (import-cheap: no numpy/torch/monai).

``flemme_core.builtin`` calls :func:`register_presets` from its ``register_datasets``
hook implementation; each factory is a ``"module:attr"`` string imported only when a
preset is loaded, so ``flemme list`` never imports nilearn, stardist or torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MODULE = "flemme_core.data.presets"  # the synthetic factories are re-exported there too


def _preset(name: str, dims: int, num_classes: int, requires: str, description: str,
            task: str = "segmentation") -> tuple[str, tuple[str, str, dict[str, Any]]]:
    """One catalog entry: ``(name, (factory, description, metadata))``.

    The factory is always ``presets:<name with _ for ->``, so it is derived here rather than
    spelled out per preset (one naming rule, no string to keep in step with the name).
    """
    metadata = {"dims": dims, "task": task, "num_classes": num_classes, "requires": requires}
    return name, (f"{_MODULE}:{name.replace('-', '_')}", description, metadata)


#: name -> (factory, description, metadata). Descriptions say what is held out.
PRESETS: dict[str, tuple[str, str, dict[str, Any]]] = dict([
    _preset("mni152-tissue-3d", 3, 4, "nilearn",
            "MNI152 2009a T1 (nilearn), 4-class tissue (bg/CSF/GM/WM); train posterior half, "
            "evaluate anterior half (cut at the brain mask's mid-y)"),
    _preset("mni152-tissue-2d", 2, 4, "nilearn",
            "MNI152 2009a T1 axial slices (nilearn), 4-class tissue; posterior half of each slice "
            "trains, anterior half evaluates"),
    _preset("stardist-nuclei-2d", 2, 2, "stardist",
            "stardist 2D fluorescence nuclei 512x512, foreground vs background; train on 3 "
            "quadrants, evaluate on the bottom-right one"),
    _preset("stardist-nuclei-3d", 3, 2, "stardist",
            "stardist 3D nuclei 31x61x57, foreground vs background; train on y < 40, evaluate on y >= 40"),
    _preset("colin27-aal-2d", 2, 117, "mricron-data (apt)",
            "Colin27 T1 axial slices with the 116-region AAL atlas (Debian mricron-data), 117 classes; "
            "train z mod 10 in 0..6, evaluate z mod 10 == 8; options: {subsample: 2}: whole slices at 2x "
            "in-plane subsampling (every 2nd voxel, 2 mm), padded with background to 96x128"),
    _preset("colin27-t1-2d", 2, 0, "mricron-data or nilearn", task="reconstruction",
            description="Colin27 T1 axial slices, image only, scaled to [0, 1] (MNI152 1 mm if "
            "mricron-data is absent); train z mod 10 in 0..6, evaluate z mod 10 == 8"),
    _preset("synthetic-2d", 2, 3, "",
            "generated 2D disks and squares with noise (deterministic by seed); held-out images are "
            "generated separately"),
    _preset("synthetic-3d", 3, 3, "",
            "generated 3D spheres and cubes with noise (deterministic by seed); held-out volumes are "
            "generated separately"),
])


def register_presets(register: Callable[..., Any]) -> None:
    """Register every built-in preset through a ``register_datasets`` hook's ``register``."""
    for name, (factory, description, metadata) in PRESETS.items():
        register(name, factory, description=description, **metadata)
