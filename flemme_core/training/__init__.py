"""Training, evaluation and prediction for any registered architecture and encoder.

Import-cheap: the submodules (torch, MONAI) load on first use.

* :func:`train` (RunConfig, resume=, overwrite=) -> summary dict; :class:`Trainer`
* :func:`load_run_config` (yaml path, overrides, --set items) -> :class:`RunConfig`
* :func:`evaluate_checkpoint` (checkpoint, data=...) -> metrics dict (``flemme eval``)
* :func:`predict_files` (checkpoint, images, out) -> (input, written) pairs (``flemme predict``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "trainer", "Trainer": "trainer", "TrainingError": "trainer",
    "RunConfig": "config", "TrainConfig": "config", "load_run_config": "config",
    "train_config_from_dict": "config", "run_config_from_dict": "config",
    "evaluate_checkpoint": "inference", "predict_files": "inference",
    "evaluate": "evaluation", "EvalSettings": "evaluation", "infer": "evaluation",
}
__all__ = ["EvalSettings", "RunConfig", "TrainConfig", "Trainer", "TrainingError", "evaluate",
           "evaluate_checkpoint", "infer", "load_run_config", "predict_files", "run_config_from_dict", "train",
           "train_config_from_dict"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
