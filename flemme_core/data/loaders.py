"""From the ``data:`` section of a config to checked datasets and DataLoaders.

    data:
      preset: mni152-tissue-3d        # or datalist: ..., or images: + labels: folders
      options: {resolution: 2}        # preset options
      patch_size: [64, 48, 64]        # default: the preset's suggestion
      batch_size: 2                   # patches per step = batch_size x crop num_samples
      num_workers: 0
      cache: true                     # monai CacheDataset of the deterministic prefix
      transforms: {flip: 0.5}

Everything is checked (files, shapes, affines, label values, patch size) when the
loaders are built, before training. Given the same ``seed``, the batches are the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, unknown_name_message
from . import checks
from .errors import DataError
from .preprocessing import check_steps, from_transforms
from .transforms import build_transforms, check_pipeline, parse_transforms


@dataclass
class DataConfig:
    """The ``data:`` section; exactly one of ``preset``, ``datalist`` or ``images``+``labels``."""

    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    datalist: str | None = None
    base_dir: str | None = None
    images: str | None = None
    labels: str | None = None
    num_classes: int | None = None
    val_fraction: float = 0.2
    patch_size: list[int] | None = None
    batch_size: int = 2
    val_batch_size: int = 1
    num_workers: int = 0
    cache: bool = True
    cache_rate: float = 1.0
    check: bool = True
    transforms: dict[str, Any] = field(default_factory=dict)


def data_config_from_dict(data: Mapping[str, Any] | DataConfig) -> DataConfig:
    """Validate the ``data:`` mapping: unknown keys and wrong types are one-line ConfigErrors."""
    if isinstance(data, DataConfig):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"the data section must be a mapping, got {data!r:.60}")
    names = [f.name for f in fields(DataConfig)]
    for key in data:
        if key not in names:
            raise ConfigError(unknown_name_message("data key", str(key), names, "in the data section"))
    cfg = DataConfig(**dict(data))
    for key in ("preset", "datalist", "images", "labels", "base_dir"):  # wrong types: one line naming the key
        value = getattr(cfg, key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"data.{key} must be a {'name' if key == 'preset' else 'path'} (a string), got "
                              f"{type(value).__name__} {value!r:.40}")
    if not isinstance(cfg.transforms, Mapping):
        raise ConfigError(f"data.transforms must be a mapping (e.g. {{flip: 0.5}}), got {cfg.transforms!r:.40}")
    for key in ("cache", "check"):
        if not isinstance(getattr(cfg, key), bool):
            raise ConfigError(f"data.{key} must be true or false, got {getattr(cfg, key)!r:.40}")
    for key in ("val_fraction", "cache_rate"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.{key} must be a number in [0, 1], got {value!r:.40}")
    sources = [k for k in ("preset", "datalist", "images") if getattr(cfg, k)]
    if len(sources) != 1:
        raise ConfigError("data needs exactly one of preset, datalist or images+labels (got "
                          f"{', '.join(sources) or 'none'}); e.g. data: {{preset: synthetic-2d}}")
    if cfg.images and not cfg.labels:
        raise ConfigError("data.images needs data.labels (a folder of label files with the same stems)")
    if cfg.patch_size is not None:
        if not isinstance(cfg.patch_size, (list, tuple)) or not all(isinstance(p, int) and p > 0
                                                                    for p in cfg.patch_size):
            raise ConfigError(f"data.patch_size must be a list of positive integers, got {cfg.patch_size!r}")
        cfg.patch_size = list(cfg.patch_size)
    for key in ("batch_size", "val_batch_size"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            raise ConfigError(f"data.{key} must be a positive integer, got {getattr(cfg, key)!r}")
    if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, got {cfg.num_workers!r}")
    if not isinstance(cfg.options, Mapping):
        raise ConfigError(f"data.options must be a mapping of preset options, got {cfg.options!r:.60}")
    return cfg


@dataclass
class DataInfo:
    """What the trainer and the model builder need to know about the data."""

    name: str
    task: str
    dims: int
    in_channels: int
    #: output classes (segmentation), 0 for reconstruction (out_channels = in_channels).
    num_classes: int
    patch_size: tuple[int, ...] | None
    held_out_description: str
    num_train: int
    num_held_out: int
    spacing: tuple[float, ...] = ()
    class_names: list[str] = field(default_factory=list)
    #: every deterministic step from a raw source image to the model's input
    #: (:mod:`.preprocessing`): the preset's own, then ``data.transforms``'. Stored in checkpoints.
    preprocessing: list[dict] = field(default_factory=list)
    #: how the data was read, for the run header (4D images as channels, files outside the dataset folder)
    notes: list[str] = field(default_factory=list)

    @property
    def out_channels(self) -> int:
        return self.num_classes if self.task == "segmentation" else self.in_channels


@dataclass
class DataBundle:
    """Loaders plus facts; call ``train_sampler.set_epoch(epoch)`` each epoch when it is set."""

    train_loader: Any
    val_loader: Any
    info: DataInfo
    train_sampler: Any = None
    train_dataset: Any = None
    val_dataset: Any = None


# -- presets ---------------------------------------------------------------------------
def preset_names() -> list[str]:
    """Names of every dataset preset: built-in ones plus those registered by plugins."""
    from .catalog import PRESETS

    return sorted(set(PRESETS) | set(_registered()))


def _registered() -> dict[str, Any]:
    try:
        from ..registry import get_registry

        return dict(get_registry().components("dataset"))
    except ImportError:  # the registry's builtin module is not there (partial install): catalog only
        return {}


def load_preset(name: str, **options: Any):
    """Call a preset's factory (built-in or from a plugin) and return its DatasetSplits."""
    import importlib

    from .catalog import PRESETS

    registered = _registered()
    if name in registered:
        factory = registered[name].load()
    elif name in PRESETS:
        module, _, attr = PRESETS[name][0].partition(":")
        factory = getattr(importlib.import_module(module), attr)
    else:
        raise ConfigError(unknown_name_message("dataset preset", name, preset_names(), "see `flemme list datasets`"))
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in options:
            if key not in params:
                raise ConfigError(unknown_name_message(f"option of preset {name!r}", key, list(params),
                                                       "in data.options"))
    return factory(**options)


# -- items ------------------------------------------------------------------------------
def _file_items(cfg: DataConfig, seed: int) -> tuple[list[dict], list[dict], str]:
    from .sources import folder_pairs, read_datalist, split_off_validation

    if cfg.datalist:
        train, val = read_datalist(cfg.datalist, cfg.base_dir)
        where = f"datalist {cfg.datalist}"
    else:
        train, val = folder_pairs(cfg.images, cfg.labels), []
        where = f"folders {cfg.images} + {cfg.labels}"
    checks.check_not_empty(train, f"the training list of {where}", "add image/label pairs")
    if not val:
        train, val = split_off_validation(train, cfg.val_fraction, seed)
        desc = f"{len(val)} of {len(train) + len(val)} cases of {where} (seeded random split, seed {seed})"
    else:
        desc = f"the validation list ({len(val)} case(s)) of {where}"
    return train, val, desc


def _classes_from_data(cfg: DataConfig, items: list[dict]) -> tuple[int, list[str]]:
    """``data.num_classes``, else what the data says: a Decathlon/nnU-Net ``dataset.json``'s
    ``labels`` (beside the datalist, or above the images folder), else the largest label value
    in the label files + 1. Returns the count and the declared class names (or [])."""
    from .sources import declared_labels

    listed = Path(cfg.datalist) if cfg.datalist else Path(cfg.images).parent / "dataset.json"
    names = declared_labels(listed) if listed.is_file() else []
    if cfg.num_classes is not None:
        return cfg.num_classes, names if len(names) == cfg.num_classes else []
    if names:
        return len(names), names
    return checks.scan_num_classes(items), []


def build_datasets(data: Mapping[str, Any] | DataConfig, *, seed: int = 0) -> tuple[Any, Any, DataInfo]:
    """Checked train and held-out MONAI datasets (CacheDataset when ``cache``) and the DataInfo."""
    from monai.data import CacheDataset, Dataset

    cfg = data_config_from_dict(data)
    section = dict(cfg.transforms or {})
    if cfg.preset:
        splits = load_preset(cfg.preset, **cfg.options)
        from_files, dims, name = False, splits.dims, splits.name
        where = f"preset {cfg.preset}"
        checks.check_not_empty(splits.train, f"the training split of {where}", "check the preset's options")
        checks.check_not_empty(splits.held_out, f"the held-out split of {where}", "check the preset's options")
        num_classes, task = splits.num_classes, splits.task
        has_label = "label" in splits.train[0]
        facts = checks.check_arrays(splits.train, dims=dims, num_classes=num_classes, where=f"{where} train")
        checks.check_splits_agree(facts, checks.check_arrays(splits.held_out, dims=dims, num_classes=num_classes,
                                                             where=f"{where} held-out"))
        notes: list[str] = []
        train_items, val_items = splits.train, splits.held_out
        patch = cfg.patch_size or (list(splits.patch_size) if splits.patch_size else None)
        desc, spacing, class_names = splits.held_out_description, tuple(splits.spacing), list(splits.class_names)
        steps = check_steps(splits.preprocessing, f"preset {cfg.preset}: preprocessing")
        if task == "reconstruction" and "kspace" not in section and "denoise" not in section:
            section["kspace"] = True  # an image-only preset needs an input/target pair
    else:
        if cfg.num_classes is not None and (not isinstance(cfg.num_classes, int) or isinstance(cfg.num_classes, bool)
                                            or cfg.num_classes < 1):
            raise ConfigError("data.num_classes must be a positive integer (count the background), "
                              f"got {cfg.num_classes!r}; or leave it out to take it from the data")
        train_items, val_items, desc = _file_items(cfg, seed)
        num_classes, declared = _classes_from_data(cfg, train_items + val_items)
        from_files, task, has_label = True, "segmentation", True
        name = cfg.datalist or str(cfg.images)
        if cfg.check:
            facts = checks.check_files(train_items, num_classes=num_classes, where="training")
            val_facts = checks.check_files(val_items, num_classes=num_classes, where="validation")
            checks.check_splits_agree(facts, val_facts)
        else:
            facts = checks.check_files(train_items[:1], num_classes=num_classes, check_values=False)
            val_facts = []
        notes = checks.file_notes(facts + val_facts) + outside_notes(cfg, train_items + val_items)
        dims, patch, class_names = len(facts[0].spatial), cfg.patch_size, declared
        spacing = facts[0].spacing
        section.setdefault("normalize", "zscore")
        steps = []
    if "kspace" in section or "denoise" in section:
        task = "reconstruction"
    if patch is not None and len(patch) != dims:
        raise ConfigError(f"data.patch_size {list(patch)} has {len(patch)} numbers but the data is {dims}D; "
                          f"give {dims}, e.g. {list(patch)[:dims] + [patch[-1]] * (dims - len(patch))}")
    if "crop" not in section and patch is not None:
        section["crop"] = "label" if has_label and task == "segmentation" else "random"
    parsed = parse_transforms(section)
    check_pipeline(parsed, dims=dims, patch_size=patch, from_files=from_files, has_label=has_label)
    if "spacing" in parsed or "orientation" in parsed:
        pix = parsed.get("spacing", {}).get("pixdim")
        spacing = tuple(float(p) for p in pix) if pix else spacing
        shapes = [checks.resampled_shape(f, parsed.get("orientation", {}).get("axcodes"), pix) for f in facts]
    else:
        shapes = [f.spatial for f in facts]
    if "crop" in parsed and "pad" not in parsed:
        checks.check_patch(shapes, [f.name for f in facts], patch)
    if "crop" not in parsed:
        checks.check_batchable(shapes, cfg.batch_size)
    common = {"dims": dims, "patch_size": patch, "from_files": from_files, "has_label": has_label,
              "seed": seed}
    train_tf = build_transforms(parsed, train=True, **common)
    val_tf = build_transforms(parsed, train=False, **common)
    if cfg.cache:
        workers = max(1, min(cfg.num_workers, 4))
        train_ds = CacheDataset(train_items, train_tf, cache_rate=cfg.cache_rate, num_workers=workers, progress=False)
        val_ds = CacheDataset(val_items, val_tf, cache_rate=cfg.cache_rate, num_workers=workers, progress=False)
    else:
        train_ds, val_ds = Dataset(train_items, train_tf), Dataset(val_items, val_tf)
    info = DataInfo(name=name, task=task, dims=dims, in_channels=facts[0].channels,
                    num_classes=num_classes if task == "segmentation" else 0,
                    patch_size=tuple(patch) if patch else None, held_out_description=desc,
                    num_train=len(train_items), num_held_out=len(val_items), spacing=spacing,
                    class_names=class_names, preprocessing=steps + from_transforms(parsed), notes=notes)
    return train_ds, val_ds, info


def outside_notes(cfg: DataConfig, items: list[dict]) -> list[str]:
    """Datalist paths that leave the dataset folder are allowed (other disks) but shown resolved."""
    from pathlib import Path

    if not cfg.datalist:
        return []
    base = Path(cfg.base_dir if cfg.base_dir is not None else Path(cfg.datalist).parent).resolve()
    outside = sorted({p for item in items for p in item.values() if not Path(p).is_relative_to(base)})
    if not outside:
        return []
    shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
    return [f"{len(outside)} datalist path(s) lie outside the dataset folder {base}, resolved to: {shown}"]


def build_dataloaders(data: Mapping[str, Any] | DataConfig, *, seed: int = 0, distributed: bool = False,
                      rank: int = 0, world_size: int = 1,
                      sampler: Callable[[Any], Any] | None = None) -> DataBundle:
    """Train and held-out DataLoaders from the ``data:`` section, checked before returning.

    ``sampler(dataset) -> torch Sampler`` overrides the training sampler; otherwise
    ``distributed=True`` shards the training set with a seeded ``DistributedSampler``
    (call ``bundle.train_sampler.set_epoch(epoch)``). The held-out loader is never
    sharded: evaluate on rank 0 or shard ``bundle.val_dataset`` yourself.
    """
    import torch
    from monai.data import DataLoader

    cfg = data_config_from_dict(data)
    train_ds, val_ds, info = build_datasets(cfg, seed=seed)
    train_sampler = None
    if sampler is not None:
        train_sampler = sampler(train_ds)
    elif distributed:
        from torch.utils.data.distributed import DistributedSampler

        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world_size {world_size}")
        train_sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    persistent = cfg.num_workers > 0
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=train_sampler is None,
                              sampler=train_sampler, num_workers=cfg.num_workers, generator=generator,
                              persistent_workers=persistent, drop_last=False)
    val_loader = DataLoader(val_ds, batch_size=cfg.val_batch_size, shuffle=False, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(seed + 1), persistent_workers=persistent)
    return DataBundle(train_loader, val_loader, info, train_sampler, train_ds, val_ds)


def check_data(data: Mapping[str, Any] | DataConfig, *, seed: int = 0) -> DataInfo:
    """Run every check of :func:`build_dataloaders` and return the DataInfo (for ``flemme check``)."""
    import dataclasses

    cfg = dataclasses.replace(data_config_from_dict(data), cache=False)  # check, do not cache
    return build_datasets(cfg, seed=seed)[2]


__all__ = ["DataBundle", "DataConfig", "DataError", "DataInfo", "build_dataloaders", "build_datasets",
           "check_data", "data_config_from_dict", "load_preset", "preset_names"]
