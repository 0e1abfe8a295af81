"""Stopping a run on request: SIGTERM is handled like Ctrl-C, never inside a checkpoint commit.

``with stop_signals():`` (around a run, main thread) turns SIGTERM into :class:`Stopped`,
a ``KeyboardInterrupt`` that remembers its signal, so every ``finally`` (the run-folder
lock, the metrics log) runs exactly as for Ctrl-C. ``with deferred_stops():`` (around a
checkpoint commit) holds SIGINT and SIGTERM until the commit is done, so a stop lands
after the current atomic write: the run folder always holds a complete state to resume.

Exit status: 130 for SIGINT, 143 for SIGTERM (128 + signal number, as shells report a
process killed by that signal); :func:`exit_code` gives it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stopped(KeyboardInterrupt):
    """A stop request (SIGINT or SIGTERM) delivered as an exception."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


_state: dict[str, Any] = {"deferring": 0, "pending": None}


def _handler(signum: int, frame: Any) -> None:
    if _state["deferring"]:
        _state["pending"] = signum  # delivered when the commit in progress is complete
        return
    raise Stopped(signum)


def exit_code(exc: BaseException) -> int:
    """130 for SIGINT (or a plain KeyboardInterrupt), 143 for SIGTERM."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def signal_name(exc: BaseException) -> str:
    return signal.Signals(int(getattr(exc, "signum", signal.SIGINT))).name


@contextmanager
def stop_signals() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as :class:`Stopped` inside the block (no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state["pending"] = None


@contextmanager
def deferred_stops() -> Iterator[None]:
    """Hold stop requests until the block (a checkpoint commit) has finished."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    if not _state["deferring"] and _state["pending"] is not None:  # only after a commit that completed
        signum, _state["pending"] = _state["pending"], None
        raise Stopped(signum)


#: set by ``flemme train --nproc N`` for its workers: the launching process reports stops and failures once.
LAUNCHED_ENV = "FLEMME_LAUNCHED"


def resume_command(argv: list[str] | None = None) -> str:
    """The command that continues this run: the same arguments, ``--resume`` instead of ``--overwrite``."""
    import shlex
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    kept = [a for a in args if a not in ("--overwrite", "--resume")]
    return "flemme " + shlex.join(kept + ["--resume"])
