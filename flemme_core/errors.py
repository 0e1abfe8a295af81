"""User-facing errors.

Every mistake a user can make (a misspelt name, a wrong shape, a missing plugin, a
corrupt file) raises a :class:`FlemmeError` whose message is one line naming the
problem and the fix. The CLI prints it without a traceback and exits non-zero;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FlemmeError(Exception):
    """A user mistake with a one-line message that says how to fix it."""

    exit_code = 2


class ConfigError(FlemmeError):
    """A configuration key, value or component name is wrong."""


class ShapeError(FlemmeError):
    """An input or image size violates a model's shape rule."""


class PluginError(FlemmeError):
    """A plugin is missing, broken, or conflicts with another."""


class CheckpointError(FlemmeError):
    """A checkpoint file is missing, corrupt, or needs a plugin that is not installed."""


class OutputError(FlemmeError):
    """An output cannot be written: a read-only or missing folder, a full disk, no permission."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Names from ``choices`` that look like ``name`` (for 'did you mean' hints)."""
    choices = sorted(set(choices))
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    prefix = [c for c in choices if c.lower().startswith(name.lower()[:2]) and c.lower() not in hits]
    return [lowered[h] for h in hits] + prefix[: max(0, n - len(hits))]


def unknown_name_message(what: str, name: str, choices: Iterable[str], hint: str = "") -> str:
    """'unknown encoder 'cnnn'; did you mean 'cnn'? (available: cnn, vit)' in one line."""
    choices = sorted(set(choices))
    close = close_matches(name, choices)
    msg = f"unknown {what} {name!r}"
    if close:
        msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    msg += f" (available: {', '.join(choices) if choices else 'none'})"
    if hint:
        msg += f"; {hint}"
    return msg
