"""What a run reports: a JSONL metrics file, optional TensorBoard, a progress bar.

Only rank 0 logs. On resume the metrics file is cut back to the resumed step, so a run
killed after logging rows it never checkpointed does not show them twice.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def json_safe(value: Any) -> Any:
    """NaN/inf -> null, recursively, so every JSON flemme writes is valid for every reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class MetricsLog:
    """Appends ``{"step", "split", ...}`` rows; ``truncate(step)`` drops rows after ``step``."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = False):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            self.writer = tensorboard_writer()(str(Path(run_dir) / "tensorboard"))

    def truncate(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and _row_step(line) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = json_safe(row)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=False) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step",) and value is not None:
                    self.writer.add_scalar(f"{row.get('split', 'train')}/{key}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def tensorboard_writer() -> Any:
    """torch's SummaryWriter class, or one line saying how to get it (checked before a run writes)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("train.tensorboard needs the tensorboard package; pip install tensorboard "
                          "(or set train.tensorboard: false)") from None
    return SummaryWriter


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, TypeError):
        return 1 << 62  # a torn last line (killed mid-write) is dropped


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


class Progress:
    """A tqdm bar (loss, lr, last metric, ETA) on a terminal; otherwise (a log file, a pipe) a plain
    line at least every ``interval`` seconds (step, loss, s/step, ETA), so a piped run is never
    silent until its first validation. Everything goes to stderr (results go to stdout)."""

    #: seconds between plain progress lines when stderr is not a terminal.
    INTERVAL = 10.0

    def __init__(self, total: int, initial: int, enabled: bool, quiet: bool, interval: float | None = None):
        self.enabled = enabled and not quiet
        self.quiet = quiet
        self.bar = None
        self.start = time.perf_counter()
        self.initial = initial
        self.total = total
        self.interval = self.INTERVAL if interval is None else interval
        self.last_line = self.start
        if self.enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:  # no bar: validation lines only
                return
            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step", leave=True)

    def update(self, step: int, postfix: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                 refresh=False)
        elif self.enabled and (time.perf_counter() - self.last_line >= self.interval or step == self.total):
            self.last_line = time.perf_counter()
            done = max(step - self.initial, 1)
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
            print(f"step {step}/{self.total}  {shown}  {(self.last_line - self.start) / done:.3f} s/step "
                  f"(wall, incl. validation)  eta {self.eta(step)}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def eta(self, step: int) -> str:
        done = step - self.initial
        if done <= 0:
            return "?"
        left = (time.perf_counter() - self.start) / done * (self.total - step)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
