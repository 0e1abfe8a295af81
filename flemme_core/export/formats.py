"""The export formats, their file suffixes and the optional packages each one needs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ConfigError, unknown_name_message

#: format name -> (file suffixes, what it is)
FORMATS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": ((".onnx",), "ONNX (torch.onnx dynamo exporter), run with ONNX Runtime"),
    "torch-export": ((".pt2",), "torch.export ExportedProgram, loaded with torch.export.load"),
    "torchscript": ((".ts", ".torchscript"), "TorchScript (torch.jit.trace), loaded with torch.jit.load"),
}
#: the packages a format needs beyond torch (flemme-core[export] installs them)
NEEDS: dict[str, tuple[str, ...]] = {"onnx": ("onnx", "onnxscript", "onnxruntime")}


def format_of_path(path: str | Path) -> str | None:
    """The export format a file name stands for, or None (a checkpoint, an image, ...)."""
    name = str(path).lower()
    for fmt, (suffixes, _) in FORMATS.items():
        if name.endswith(suffixes):
            return fmt
    return None


def is_exported(path: str | Path) -> bool:
    return format_of_path(path) is not None


def check_format(fmt: str, path: str | Path | None = None) -> str:
    """The format to write: ``fmt`` ('auto' = from the suffix of ``path``), validated."""
    if fmt == "auto":
        guessed = format_of_path(path or "")
        if guessed is None:
            raise ConfigError(f"cannot tell the export format from {str(path)!r}; name it .onnx, .pt2 or .ts, "
                              f"or pass --format ({', '.join(FORMATS)})")
        return guessed
    if fmt not in FORMATS:
        raise ConfigError(unknown_name_message("export format", fmt, FORMATS))
    return fmt


def require(fmt: str, runtime_only: bool = False) -> None:
    """One line naming what to install when a format's packages are missing."""
    needed = NEEDS.get(fmt, ())
    if runtime_only:
        needed = tuple(n for n in needed if n == "onnxruntime")
    missing = [n for n in needed if importlib.util.find_spec(n) is None]
    if missing:
        raise ConfigError(f"the {fmt} format needs {', '.join(missing)} (not installed); "
                          f"run: pip install 'flemme-core[export]'")
