"""Deployment exports of a flemme checkpoint: ONNX, torch.export (``.pt2``), TorchScript.

* :mod:`.modes`: the ``export_mode(format)`` hook modules implement to switch to an
  exportable path (or to say why none exists);
* :mod:`.exporter`: tracing with dynamic batch and spatial axes, writing, verification;
* :mod:`.metadata`: what the file carries and how it is read back (no torch needed);
* :mod:`.runtime`: exported files as predictors for ``flemme predict`` (ONNX Runtime for
  ``.onnx``).

This package's top level stays import-cheap: the heavy modules are imported on use.
"""

from __future__ import annotations

from .formats import FORMATS, format_of_path, is_exported

__all__ = ["FORMATS", "format_of_path", "is_exported"]
