"""Small run configs and test-only architectures for the trainer tests (synthetic data only)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from click.testing import Result

TINY_2D: dict[str, Any] = {
    "model": {"arch": "unet", "encoder": {"name": "tiny", "channels": [8, 16], "norm": "instance"}},
    "data": {"preset": "synthetic-2d", "options": {"num_train": 8, "num_held_out": 2, "size": [48, 48], "seed": 1},
             "batch_size": 4, "patch_size": [48, 48]},
    "train": {"steps": 60, "lr": 0.01, "warmup": 0, "val_every": 30, "threads": 1, "progress": False},
}

TINY_3D: dict[str, Any] = {
    "model": {"arch": "unet", "encoder": {"name": "tiny", "channels": [8, 16], "norm": "instance"}},
    "data": {"preset": "synthetic-3d",
             "options": {"num_train": 4, "num_held_out": 2, "size": [24, 24, 24], "seed": 1, "num_classes": 2},
             "batch_size": 2, "patch_size": [24, 24, 24]},
    "train": {"steps": 40, "lr": 0.01, "warmup": 0, "val_every": 0, "threads": 1, "progress": False},
}

#: a run small enough to kill and resume several times in a few seconds (flips: random augmentation).
RESUMABLE: dict[str, Any] = {
    "model": {"arch": "unet", "encoder": {"name": "tiny", "channels": [4, 8], "norm": "instance", "dropout": 0.1}},
    "data": {"preset": "synthetic-2d", "options": {"num_train": 6, "num_held_out": 2, "size": [32, 32]},
             "batch_size": 2, "patch_size": [24, 24], "transforms": {"flip": 0.5}},
    "train": {"steps": 24, "lr": 0.01, "val_every": 8, "save_every": 3, "threads": 1, "progress": False},
}


def config(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with some keys of some sections replaced."""
    out = copy.deepcopy(base)
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env() -> dict[str, str]:
    """Subprocess environment: one thread per process (2 cores shared by several processes)."""
    out = dict(os.environ)
    out.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return out


def flemme(*args: str, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flemme_core", *args], check=False, capture_output=True, text=True,
                          env=env(), timeout=timeout, **kwargs)


def one_error_line(result: Result, *needles: str) -> str:
    """The command failed and its whole output is one ``Error:`` line containing every needle.

    Stricter than ``reliability_helpers.one_error`` (which allows notes before the error):
    these callers stop before anything else is printed, so any other line is a regression.
    """
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
