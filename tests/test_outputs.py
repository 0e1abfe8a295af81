"""What a researcher reads and shares: files, JSON and logs the tool writes (issue 19)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flemme_core.checkpoint import atomic_write


def test_atomic_write_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    old = os.umask(0o077)
    try:
        out = atomic_write(tmp_path / "b.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
