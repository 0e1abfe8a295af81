"""``flemme demo``: train and evaluate a small model on real images in a few minutes on a CPU.

4-class brain tissue segmentation of the MNI152 template shipped with nilearn, trained on
the posterior half of the brain and evaluated on the anterior half (the template is
left-right symmetric, so a left/right split would evaluate on a mirror image). The
config is ``examples/configs/mni152-tissue-3d.yaml`` (kept identical by a test);
``--synthetic`` uses generated images instead and needs no data package.
"""

from __future__ import annotations

import copy
from typing import Any

DEMO: dict[str, Any] = {
    "model": {
        "arch": "unet",
        "encoder": {"name": "cnn"},  # the family's defaults: 16-32-64-128, stride-2 stem, residual blocks
        "loss": "dice_ce",
    },
    "data": {
        "preset": "mni152-tissue-3d",
        "options": {"resolution": 2},
        "patch_size": [48, 48, 48],
        "batch_size": 2,
        "transforms": {"crop": "label", "flip": {"prob": 0.5, "axes": [1, 2]}},
    },
    "train": {"steps": 1600, "max_seconds": 160, "lr": 0.001, "warmup": 0, "schedule": "constant",
              "val_every": 500, "sw_batch_size": 4, "overlap": 0.25, "seed": 0},
}

SYNTHETIC: dict[str, Any] = {
    "model": {"arch": "unet", "encoder": {"name": "cnn", "up": "transpose", "channels": [16, 32, 64], "norm": "instance", "patch_size": 1,
                                          "block": "double_conv"}},
    "data": {"preset": "synthetic-2d", "options": {"num_train": 32, "num_held_out": 8, "size": [64, 64], "seed": 0},
             "patch_size": [64, 64], "batch_size": 8, "transforms": {"flip": 0.5}},
    "train": {"schedule": "cosine", "warmup": 0.05, "steps": 200, "lr": 0.003, "val_every": 50},
}


def demo_config(synthetic: bool = False, steps: int | None = None, output: str | None = None,
                threads: int | None = None) -> dict[str, Any]:
    cfg = copy.deepcopy(SYNTHETIC if synthetic else DEMO)
    if steps is not None:
        cfg["train"]["steps"] = steps
        cfg["train"]["val_every"] = max(1, steps // 3)
    if output is not None:
        cfg["train"]["output"] = output
    if threads is not None:
        cfg["train"]["threads"] = threads
    return cfg


def require_demo_family() -> None:
    """The demo's measured figures are for the ``cnn`` family, which is a plugin: without it,
    say in one line what to install rather than train something else."""
    from ..errors import ConfigError
    from ..registry import get_registry

    family = DEMO["model"]["encoder"]["name"]
    if family not in get_registry().components("encoder"):
        raise ConfigError(f"flemme demo trains the {family!r} encoder family, which is not installed; "
                          f"install it with `pip install ./plugins/flemme-{family}` (or pip install flemme-{family})")


def run_demo(synthetic: bool = False, steps: int | None = None, output: str | None = None,
             threads: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train (replacing a previous demo run in ``output``), evaluate, write the figures."""
    from .config import run_config_from_dict
    from .trainer import train

    require_demo_family()
    name = "synthetic-2d-demo" if synthetic else "mni152-tissue-3d-demo"
    run = run_config_from_dict(demo_config(synthetic, steps, output or f"runs/{name}", threads), name=name)
    return train(run, overwrite=True, quiet=quiet)
