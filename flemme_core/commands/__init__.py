"""Commands registered through ``register_commands`` (the core's own ones live in this package).

:func:`load_command` turns a registered command component into a click command when it is
about to run: an import failure or a wrong attribute is one :class:`PluginError` naming the
distribution, and an unexpected exception escaping a plugin's command is reported as
``error in plugin <distribution>: ...`` (set ``FLEMME_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import click

from ..errors import FlemmeError, PluginError


def plugin_error(provider_name: str, exc: BaseException) -> PluginError:
    """One line for an exception a plugin raised that is not a user mistake."""
    text = (f"{type(exc).__name__}: {exc}".strip().splitlines() or [type(exc).__name__])[0]
    return PluginError(f"error in plugin {provider_name}: {text} (set FLEMME_DEBUG=1 for the traceback)")


def debug() -> bool:
    return os.environ.get("FLEMME_DEBUG", "").lower() in ("1", "true", "yes")


def load_command(component: Any) -> click.Command:
    """Import a registered command; its own exceptions are attributed to its distribution."""
    from ..registry import CORE_PROVIDER_NAME

    obj = component.load()
    if not isinstance(obj, click.Command):
        raise PluginError(f"command {component.name!r} from {component.provider}: {component.factory} is a "
                          f"{type(obj).__name__}, not a click.Command; reinstall or upgrade {component.provider.name}")
    if component.provider.name == CORE_PROVIDER_NAME or getattr(obj, "_flemme_attributed", False):
        return obj
    original = obj.invoke

    @functools.wraps(original)
    def invoke(ctx: click.Context) -> Any:
        try:
            return original(ctx)
        except (FlemmeError, click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # a plugin's bug, named after the plugin
            if debug():
                raise
            raise plugin_error(component.provider.name, exc) from exc

    obj.invoke = invoke  # type: ignore[method-assign]
    obj._flemme_attributed = True  # type: ignore[attr-defined]
    return obj
