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


def test_piped_progress_prints_plain_lines_with_step_loss_speed_and_eta(capsys) -> None:
    from flemme_core.training.logs import Progress

    progress = Progress(total=5, initial=0, enabled=True, quiet=False, interval=0.0)
    assert progress.bar is None  # stderr is captured: not a terminal
    for step in range(1, 6):
        progress.update(step, {"loss": 0.5 / step, "lr": 1e-3})
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert len(lines) == 5 and captured.out == ""
    assert lines[2].startswith("step 3/5  loss 0.1667") and "s/step" in lines[2] and "eta " in lines[2]
    assert "\r" not in captured.err
    slow = Progress(total=100, initial=0, enabled=True, quiet=False)  # default: one line per ~10 s
    slow.update(1, {"loss": 1.0})
    assert capsys.readouterr().err == ""
