"""What a finished (or resumed-finished) run writes besides its checkpoints.

``summary.json`` (NaN as null, written atomically), the train state dropped once nothing is
left to resume, and the figures ``curves.png`` and ``overlay.png``. Apart from the loop:
the trainer hands over its summary and what the figures need, and a figure that cannot be
drawn is a note, never a failure of a run whose results are already on disk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .logs import json_safe
from .metrics import distance_units
from .state import prune_train_state


def write_outputs(run_dir: Path, summary: dict[str, Any], *, prune: bool, info: Any, task: Any,
                  example: dict[str, Any] | None, step: int) -> None:
    """summary.json; with ``prune`` the train state is removed (last/best hold the weights);
    then the training curves and, given a held-out ``example``, its overlay at ``step``."""
    from ..checkpoint import atomic_write

    text = json.dumps(json_safe(summary), indent=1, default=str, allow_nan=False)  # NaN -> null: valid JSON
    atomic_write(Path(run_dir) / "summary.json", lambda tmp: Path(tmp).write_text(text))
    if prune and (run_dir / "state.json").exists():
        prune_train_state(run_dir)  # finished: last/best hold the weights; nothing left to resume
    try:
        from .plots import plot_curves, plot_overlay
    except ImportError:  # matplotlib missing: the numbers are still written
        return
    draw_figure("curves.png", lambda: plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png",
                                                  units=distance_units(info.spacing)))
    if example is not None:
        draw_figure("overlay.png", lambda: plot_overlay(example, run_dir / "overlay.png", task,
                                                        title=f"held out ({info.name}): step {step}",
                                                        class_names=list(info.class_names)))


def draw_figure(name: str, draw: Any) -> None:
    """Draw one figure of a finished run; a figure that cannot be drawn is skipped with a note,
    never a failure of the run (its checkpoints and metrics are already written)."""
    try:
        draw()
    except Exception as exc:  # noqa: BLE001 - e.g. a 1x1x1 held-out image: nothing to draw
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        print(f"note: {name} not drawn ({type(exc).__name__}: {first}); the run's results are unaffected",
              file=sys.stderr, flush=True)
