"""Cells side by side on one machine (``flemme compare --workers N``).

Why: a study of small cells on a many-core CPU wastes the machine one cell at a time, and
running shards side by side by hand is unfair to equal wall-clock budgets — the scheduler may
put two cells' threads on one core while another idles (measured on a 2-core machine: a
cell's steps halved). So each worker owns a fixed, disjoint set of cores (``threads`` of
them), its cells' processes are pinned to that set, and a cell runs once every cell it needs
has a result. With one worker the study runs in the calling thread, exactly as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import ConfigError

#: the cores a cell's process pins itself to (set by the study process, read by ``measure``)
CPUS_ENV = "FLEMME_CELL_CPUS"


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def worker_cpus(workers: int, threads: int | None, cpus: Sequence[int] | None = None) -> list[list[int] | None]:
    """Each worker's cores: ``threads`` each (default: an equal share), disjoint.

    One worker is not pinned (the cell uses the machine as ``flemme train`` would). Where the
    OS cannot pin a process, workers run side by side unpinned.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        return [None]
    cpus = list(usable_cpus() if cpus is None else cpus)
    per = threads or len(cpus) // workers
    if per < 1 or workers * per > len(cpus):
        need = f"{workers} x {per or 1} threads"
        raise ConfigError(f"--workers {workers} needs {need} = {workers * (per or 1)} cores, this process may use "
                          f"{len(cpus)}; lower --workers or --threads")
    if not hasattr(os, "sched_setaffinity"):
        return [None] * workers
    return [cpus[k * per:(k + 1) * per] for k in range(workers)]


def cpus_env(cpus: Iterable[int] | None) -> dict[str, str]:
    """What a cell's process needs in its environment to pin itself (nothing when unpinned)."""
    if cpus is None:
        return {}
    cpus = list(cpus)
    return {CPUS_ENV: ",".join(map(str, cpus)), "OMP_NUM_THREADS": str(len(cpus))}


def pin_from_env() -> list[int] | None:
    """In a cell's process, before torch starts its threads: pin to the cores the study chose."""
    text = os.environ.get(CPUS_ENV)
    if not text or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = [int(c) for c in text.split(",")]
    os.sched_setaffinity(0, cpus)
    return cpus


class CellQueue:
    """Cells in study order; a worker takes the first whose needed cells are neither waiting
    nor running in this process (a needed cell that another process holds is the cell's own
    business: it is handed out and says so)."""

    def __init__(self, cells: Sequence[Any], needs: Callable[[Any], Iterable[str]], path: Callable[[Any], str]):
        self._pending = list(cells)
        self._running: set[str] = set()
        self._needs, self._path = needs, path
        self._cond = threading.Condition()
        self.stopped = threading.Event()

    def take(self) -> Any | None:
        with self._cond:
            while not self.stopped.is_set() and self._pending:
                busy = self._running | {self._path(c) for c in self._pending}
                for k, cell in enumerate(self._pending):
                    if not busy.intersection(self._needs(cell)):
                        self._running.add(self._path(cell))
                        return self._pending.pop(k)
                self._cond.wait(0.5)
            return None

    def finished(self, cell: Any) -> None:
        with self._cond:
            self._running.discard(self._path(cell))
            self._cond.notify_all()

    def stop(self) -> None:
        self.stopped.set()
        with self._cond:
            self._cond.notify_all()


def run_workers(queue: CellQueue, cpus: list[list[int] | None], work: Callable[[Any, list[int] | None], None]) -> None:
    """Run ``work(cell, cores)`` for every cell of ``queue`` on ``len(cpus)`` workers.

    A KeyboardInterrupt (or any error of one worker) stops the others: their running cells'
    processes are terminated through ``queue.stopped`` (see :func:`check_stopped`) and the
    error is raised here.
    """

    def loop(cores: list[int] | None) -> None:
        while (cell := queue.take()) is not None:
            try:
                work(cell, cores)
            finally:
                queue.finished(cell)

    if len(cpus) == 1:
        loop(cpus[0])
        return
    errors: list[BaseException] = []

    def guarded(cores: list[int] | None) -> None:
        try:
            loop(cores)
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread
            errors.append(exc)
            queue.stop()

    threads = [threading.Thread(target=guarded, args=(c,), daemon=True) for c in cpus]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
    except BaseException:
        queue.stop()
        for t in threads:
            t.join()
        raise
    stopped = [e for e in errors if not isinstance(e, Stopped)]
    if stopped:
        raise stopped[0]


class Stopped(Exception):
    """Raised inside a worker whose study was stopped (another worker failed, or Ctrl-C)."""


def check_stopped(queue: CellQueue) -> None:
    if queue.stopped.is_set():
        raise Stopped()
