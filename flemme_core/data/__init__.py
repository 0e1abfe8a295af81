"""flemme's data layer: MONAI datasets, transforms and loaders from the ``data:`` config section.

The trainer needs only this::

    from flemme_core.data import build_dataloaders
    bundle = build_dataloaders(cfg["data"], seed=0, distributed=False, rank=0, world_size=1)
    bundle.info            # DataInfo: task, dims, in_channels, num_classes, out_channels, patch_size,
                           #           held_out_description, class_names, spacing
    for batch in bundle.train_loader:   # {"image": (B, C, *patch) float32, "label": (B, 1, *patch)}
        ...                             # label int64 class indices; float32 target for reconstruction
    for batch in bundle.val_loader:     # held-out images whole (batch 1): sliding-window inference
        ...
    if bundle.train_sampler is not None: bundle.train_sampler.set_epoch(epoch)

Sources (exactly one): ``preset: name`` (with ``options:``), ``datalist: x.json`` (Medical
Segmentation Decathlon format, paths relative to ``base_dir``, default the JSON's folder) or
``images: dir`` + ``labels: dir`` (pairs matched by file stem); file sources need
``num_classes``. NIfTI, NRRD, DICOM series folders and PNG/JPG are read by MONAI's readers.
Transforms come from ``data.transforms`` (see :mod:`flemme_core.data.transforms`).

Public API (lazily imported, so ``import flemme_core.data`` stays cheap):

* :func:`build_dataloaders` (data, *, seed, distributed, rank, world_size, sampler) -> DataBundle
* :func:`build_datasets` (data, *, seed) -> (train_dataset, val_dataset, DataInfo)
* :func:`check_data` (data, *, seed) -> DataInfo: every check, nothing cached (``flemme check``)
* :func:`data_config_from_dict`, :class:`DataConfig`, :class:`DataInfo`, :class:`DataBundle`
* :func:`load_preset` (name, **options) -> DatasetSplits; :func:`preset_names`;
  :class:`DatasetSplits` (train / held_out lists of ``{"image": (C,*S), "label": (1,*S)}``)
* :func:`read_image` (path) -> ImageFile; :func:`write_prediction` (pred, out_path, like);
  :func:`output_path_for` (input_path, out_dir) for ``flemme predict``
* :class:`KspaceUndersampled`, :class:`NoisyPair`, :class:`PerItemSeeded`: reconstruction pairs
* :class:`DataError`: bad data, raised before training with a one-line message
* :func:`flemme_core.data.catalog.register_presets` (register): the built-in presets, for
  the core's ``register_datasets`` hook.

Presets hold out disjoint regions (see ``shared/data.md``); their descriptions say which.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_dataloaders": "loaders", "build_datasets": "loaders", "check_data": "loaders",
    "data_config_from_dict": "loaders", "DataConfig": "loaders", "DataInfo": "loaders", "DataBundle": "loaders",
    "load_preset": "loaders", "preset_names": "loaders",
    "DatasetSplits": "splits", "DataError": "errors",
    "read_image": "io", "write_prediction": "io", "output_path_for": "io", "ImageFile": "io",
    "KspaceUndersampled": "recon", "NoisyPair": "recon", "PerItemSeeded": "recon",
    "parse_transforms": "transforms", "build_transforms": "transforms",
    "register_presets": "catalog",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
