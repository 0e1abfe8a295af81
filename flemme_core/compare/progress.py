"""Study progress on stderr: one line per cell start and finish with the study's ETA, and a
bar inside the cell on a terminal (plain lines at each quarter when piped, or when several
workers run cells side by side), so stdout carries only results.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from typing import Any, TextIO


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class StudyProgress:
    def __init__(self, total: int, to_run: int, budget_seconds: float | None = None, stream: TextIO | None = None,
                 quiet: bool = False, workers: int = 1):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.left = total, to_run
        self.budget_seconds = budget_seconds
        self.durations: list[float] = []
        self.quiet = quiet
        self.workers = workers
        self.bar: Any = None
        self._quarter: dict[int, int] = {}
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def eta(self) -> str:
        per = statistics.fmean(self.durations) if self.durations else (
            self.budget_seconds * 1.2 if self.budget_seconds else None)
        return _clock(None if per is None else per * self.left / self.workers)

    def start(self, index: int, label: str) -> None:
        self._started[index], self._quarter[index] = time.perf_counter(), 0
        self._print(f"[{index}/{self.total}] start  {label}  (study eta {self.eta()})")
        if self.tty and not self.quiet and self.workers == 1:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=100, unit="%", leave=False, dynamic_ncols=True, file=self.stream,
                            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def update(self, index: int, fraction: float, note: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(int(100 * fraction) - self.bar.n)
            self.bar.set_postfix_str(note, refresh=False)
        elif int(4 * fraction) > self._quarter.get(index, 0) and fraction < 1:
            self._quarter[index] = int(4 * fraction)
            who = f"[{index}/{self.total}]" if self.workers > 1 else ""
            seconds = time.perf_counter() - self._started.get(index, time.perf_counter())
            self._print(f"{who:<8}{25 * self._quarter[index]}%  {note}  ({seconds:.0f} s)")

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def done(self, index: int, label: str, summary: str) -> None:
        self._close_bar()
        seconds = time.perf_counter() - self._started.pop(index, time.perf_counter())
        self._quarter.pop(index, None)
        self.durations.append(seconds)
        self.left = max(0, self.left - 1)
        self._print(f"[{index}/{self.total}] done   {label}  {summary}  ({seconds:.0f} s; study eta {self.eta()})")

    def skip(self, index: int, label: str, why: str) -> None:
        self._close_bar()
        self._print(f"[{index}/{self.total}] skip   {label}  ({why})")

    def fail(self, index: int, label: str, why: str) -> None:
        self._close_bar()
        self.left = max(0, self.left - 1)
        self._print(f"[{index}/{self.total}] FAILED {label}: {why}")

    def message(self, text: str) -> None:
        self._print(text)
