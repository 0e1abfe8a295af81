"""flemme-core: encoders decoupled from architectures, plugins through entry points.

Import-cheap: ``import flemme_core`` loads pluggy only; torch and MONAI are imported
when a model is built (``build_model``, ``load_model``).
"""

from __future__ import annotations

from typing import Any

from .errors import CheckpointError, ConfigError, FlemmeError, PluginError, ShapeError
from .hookspecs import hookimpl

__all__ = [
    "CheckpointError",
    "ConfigError",
    "FlemmeError",
    "PluginError",
    "ShapeError",
    "build_encoder",
    "build_model",
    "get_registry",
    "hookimpl",
    "load_model",
    "register_plugin",
    "save_model",
    "unregister_plugin",
]

_LAZY = {
    "build_model": "flemme_core.build",
    "build_encoder": "flemme_core.build",
    "load_model": "flemme_core.checkpoint",
    "save_model": "flemme_core.checkpoint",
    "get_registry": "flemme_core.registry",
}


def register_plugin(obj: Any, name: str | None = None) -> None:
    """Register a module or object with ``@hookimpl`` functions without installing it."""
    from .registry import get_registry

    get_registry().register_plugin(obj, name)


def unregister_plugin(obj: Any) -> None:
    from .registry import get_registry

    get_registry().unregister_plugin(obj)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flemme_core' has no attribute {name!r}")
