"""Exported files as predictors: ONNX Runtime for ``.onnx``, torch for ``.pt2`` / TorchScript.

:func:`load_runner` gives a callable ``(B, C, *S) tensor -> output tensor`` for a file (the
exporter's verification runs the written file through it). :class:`ExportedModel` wraps
one with the file's metadata so that ``flemme predict`` treats it as it treats a model
rebuilt from a checkpoint: the same preprocessing, sliding-window inference and output
writing (``flemme_core.training.inference``), with no plugin or model code needed.
``.pt2`` files are read with ``torch.export.load`` and TorchScript with ``torch.jit.load``,
never ``torch.load``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ShapeError
from .custom_ops import MissingCustomOps, register_libraries
from .formats import format_of_path, require
from .metadata import check_input_shape, onnx_custom_domains, read_exported_metadata

Runner = Callable[[torch.Tensor], torch.Tensor]


def ort_providers(device: str | torch.device = "cpu") -> list[str]:
    """CUDA first when ONNX Runtime has it and the device is not CPU, then CPU."""
    import onnxruntime as ort

    wanted = ["CPUExecutionProvider"]
    if torch.device(device).type != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted


def load_runner(path: str | Path, fmt: str | None = None, device: str | torch.device = "cpu",
                threads: int | None = None, custom_domains: list[str] | None = None) -> Runner:
    """A callable running the exported file (``threads``: CPU threads, None = the runtime's default).

    An ONNX session registers the plugins' custom-op libraries of the domains the file needs
    (``custom_domains``; None: as its metadata records)."""
    fmt = fmt or format_of_path(path)
    path = str(path)
    if fmt == "onnx" and custom_domains is None:
        custom_domains = onnx_custom_domains(path)
    try:
        if fmt == "onnx":
            require("onnx", runtime_only=True)
            import onnxruntime as ort

            ort.set_default_logger_severity(3)  # failures are raised (and reported in one line), not logged
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            register_libraries(options, custom_domains or [], path)
            session = ort.InferenceSession(path, options, providers=ort_providers(device))
            name = session.get_inputs()[0].name

            def run_onnx(x: torch.Tensor) -> torch.Tensor:
                out = session.run(None, {name: x.detach().float().cpu().numpy()})[0]
                return torch.from_numpy(out).to(x.device)

            return run_onnx
        if fmt == "torch-export":
            module = torch.export.load(path).module()
        else:
            module = torch.jit.load(path, map_location="cpu")
    except MissingCustomOps:  # a missing plugin, not a corrupt file: its own one-line message
        raise
    except Exception as exc:  # noqa: BLE001 - a file the runtime cannot load is a corrupt file to the user
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path!r} could not be loaded as {fmt} (truncated or corrupt?): {detail}") from None
    module = module.to(device)

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x.to(device).float())

    return run_torch


@dataclass
class ExportedConfig:
    """The parts of a model config that inference reads (no plugin needed to build it)."""

    dims: int
    in_channels: int
    out_channels: int
    image_size: list[int]
    arch: str


class ExportedModel:
    """An exported file standing in for an :class:`~flemme_core.architectures.base.Architecture`
    at inference: ``predict``, ``task``, ``config`` and ``checkpoint_metadata`` (with the
    checkpoint's ``extra``). Inputs outside the recorded shape rule are one-line errors."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        self.path = Path(path)
        meta = read_exported_metadata(path)
        self.checkpoint_metadata: dict[str, Any] = meta
        self.rule = meta["input"]
        cfg = meta["config"]
        self.config = ExportedConfig(dims=len(self.rule["patch_size"]), in_channels=self.rule["in_channels"],
                                     out_channels=int(cfg.get("out_channels", 1)),
                                     image_size=list(self.rule["patch_size"]), arch=str(cfg.get("arch")))
        self.task = meta["task"]
        self._run = load_runner(path, meta["format_name"], device, threads, list(meta.get("custom_domains") or []))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        problem = check_input_shape(self.rule, tuple(x.shape), str(self.path))
        if problem:
            raise ShapeError(problem)
        return self._run(x)

    __call__ = predict

    # what inference calls on a model
    def eval(self) -> ExportedModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> ExportedModel:
        return self

    def evaluation_variants(self) -> dict[str, Any]:
        return {}

    def dataset_metrics(self, held_out: Any, train: Any) -> None:
        return None

    def validation_metrics(self, batch: Any) -> None:
        return None

    def inputs_and_target(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["image"], batch["label"]

    def parameters(self):  # count_parameters of flemme eval: the file's own count
        return iter(())

    training = False

    def train(self, mode: bool = True) -> ExportedModel:
        return self


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    return ExportedModel(path, device)
