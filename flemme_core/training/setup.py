"""Everything decided before the first step: device, seeding, the model config completed
from the data, and the run folder (refusing to overwrite a different run).

All user mistakes surface here, as one-line errors, before any training.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .config import RunConfig
from .runfolder import RUN_FILES  # noqa: F401 - the files --overwrite deletes (re-exported)

CONFIG_FILE = "config.yaml"
#: train keys that may change on --resume without changing the result.
RESUME_FREE_KEYS = ("output", "progress", "tensorboard", "threads", "log_every", "sw_batch_size", "keep_state")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available; use device: auto or cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA when supported (else fp16), none on CPU."""
    if mode == "none" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp fp16 needs a CUDA device; use bf16 on CPU, or none")
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    """Python, numpy and torch RNGs; deterministic kernels where torch has them.

    CPU kernels are already deterministic for a fixed thread count, and
    ``torch.use_deterministic_algorithms`` imports torch's compiler stack (seconds), so
    it is only switched on for CUDA.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory of this process in MiB: CUDA's max allocated on a GPU, else the peak resident
    set size (Linux/macOS; None where ``resource`` is missing). A process-wide peak: run one
    training per process (as ``flemme compare`` does) for a per-run figure."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        import sys
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def architecture_task(arch: str, arch_options: Any = None) -> Any:
    """The :class:`~flemme_core.tasks.Task` a model of this architecture will have, before it is
    built (to size its output from the data): the class's ``configured_task(arch_options)``
    (``distill`` answers with its inner architecture's task)."""
    from ..registry import get_registry
    from ..tasks import get_task

    component = get_registry().get("architecture", arch)  # unknown names: close matches
    cls = component.load()
    configured = getattr(cls, "configured_task", None)
    name = configured(arch_options or {}) if callable(configured) else getattr(cls, "task", None)
    return get_task(name or component.metadata.get("task") or "segmentation")


def complete_model_config(model: dict[str, Any], info: Any) -> dict[str, Any]:
    """Fill what the model config leaves out from the data (channels, classes, patch size)
    and check that what it gives agrees with the data.

    A segmentation architecture predicts the data's classes; any other predicts images
    with the input's channels (an autoencoder may train on a segmentation set's images).
    """
    model = copy.deepcopy(model)
    model.setdefault("in_channels", info.in_channels)
    arch = model.get("arch", "unet")
    from ..tasks import SEGMENTATION, get_task

    task = architecture_task(arch, model.get("arch_options")) if isinstance(arch, str) else SEGMENTATION
    if task.labels and not get_task(info.task).labels:
        raise ConfigError(f"architecture {arch!r} segments but the data ({info.name}) has no labels; use a "
                          "segmentation dataset, or a reconstruction architecture such as ae")
    if "out_channels" not in model:
        model["out_channels"] = task.out_channels(info.num_classes, info.in_channels)
    if task.labels:
        out = model["out_channels"]
        if not (out == info.num_classes or (out == 1 and info.num_classes == 2)):
            raise ConfigError(f"model.out_channels is {out} but the data has {info.num_classes} classes; set "
                              f"model.out_channels: {info.num_classes} (or omit it)")
    if model["in_channels"] != info.in_channels:
        raise ConfigError(f"model.in_channels is {model['in_channels']} but the images have {info.in_channels} "
                          f"channel(s); set model.in_channels: {info.in_channels} (or omit it)")
    patch = list(info.patch_size) if info.patch_size else None
    if "image_size" not in model:
        if patch is None:
            raise ConfigError("neither model.image_size nor data.patch_size is set; set data.patch_size "
                              "(the training patch, also the model's input size)")
        model["image_size"] = patch
    size = model["image_size"]
    size = [size] * info.dims if isinstance(size, int) else list(size)
    if len(size) != info.dims:
        raise ConfigError(f"model.image_size {size} is {len(size)}D but the data is {info.dims}D; "
                          f"give {info.dims} sizes (or omit it to use data.patch_size)")
    if patch is not None and size != patch:
        raise ConfigError(f"model.image_size {size} differs from data.patch_size {patch}: the model is trained "
                          "on patches; make them equal (or omit model.image_size)")
    model["image_size"] = size
    model.setdefault("dims", info.dims)
    return model


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if prefix == "train" and key in RESUME_FREE_KEYS:
                continue
            out += _differences(a.get(key), b.get(key), path)
        return out
    return [] if a == b else [prefix]


def prepare_run_dir(run_dir: Path, resolved: dict[str, Any], resume: bool, overwrite: bool,
                    apply: bool = True) -> bool:
    """Check the run folder (and, with ``apply``, clear it for ``overwrite``); returns whether
    there is state to resume.

    An existing run is replaced only with ``overwrite``; ``resume`` continues it when the
    config is the same (keys that do not change the result excepted). Only folders that
    carry flemme's run marker count as runs (:mod:`.runfolder`): run-file names in a
    folder without it are the user's and refused, and ``overwrite`` deletes only flemme's
    files. The main process checks and applies, holding the run-folder lock; the other
    ranks learn of a refusal from it (checking after it applied, they would see its run).
    """
    import yaml

    from . import runfolder as R

    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output {str(run_dir)!r} is a file; choose a folder with --output")
    R.refuse_foreign(run_dir)
    has_run = bool(R.run_file_names(run_dir))
    if resume and not has_run:
        where = "does not exist" if not run_dir.exists() else "holds no run"
        raise ConfigError(f"--resume: the run folder {str(run_dir)!r} {where}; check --output, or start a new run "
                          "without --resume")
    if has_run and overwrite:
        if not apply:
            return False
        R.clear_run_files(run_dir)
        has_run = False
    if has_run and not resume and not config_path.exists():
        raise ConfigError(f"output folder {str(run_dir)!r} already holds a run whose config.yaml is missing; "
                          "--overwrite to replace it, or --output to write elsewhere")
    if has_run and config_path.exists():
        try:
            from ..safeload import load_yaml_text

            previous = load_yaml_text(config_path.read_text(), repr(str(config_path))) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{str(config_path)!r} is corrupt ({str(exc).splitlines()[0]}); use --overwrite "
                              "to start the run again") from None
        diff = _differences(previous, resolved)
        if diff:  # never suggest --resume: it would continue a different model
            raise ConfigError(f"output folder {str(run_dir)!r} holds a different run ({', '.join(diff[:3])} "
                              "changed); use another --output, or --overwrite to replace it")
        if not resume:
            raise ConfigError(f"output folder {str(run_dir)!r} already holds a run of this config; pass --resume to "
                              "continue it, --overwrite to replace it, or --output to write elsewhere")
    if apply:
        run_dir.mkdir(parents=True, exist_ok=True)
        R.clean_stale_tmp(run_dir)
        R.claim(run_dir)
    return has_run and (run_dir / "state.json").exists()


def write_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    import yaml

    from ..checkpoint import atomic_write

    text = yaml.safe_dump(resolved, sort_keys=False)
    atomic_write(Path(run_dir) / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


def resolved_config(run: RunConfig, model: dict[str, Any]) -> dict[str, Any]:
    out = run.to_dict()
    out["model"] = model
    return out
