"""The cores each worker of ``flemme compare --workers`` owns, and the order in which the
queue hands cells out (a cell never starts before the cells it needs have finished)."""

from __future__ import annotations

import threading
import time

import pytest

from flemme_core.compare.workers import CellQueue, cpus_env, run_workers, worker_cpus
from flemme_core.errors import ConfigError


def test_workers_own_disjoint_cores():
    assert worker_cpus(1, None, [0, 1, 2, 3]) == [None]  # one worker: not pinned, as flemme train
    assert worker_cpus(2, None, [0, 1, 2, 3]) == [[0, 1], [2, 3]]  # an equal share each
    assert worker_cpus(3, 1, [0, 2, 4, 6]) == [[0], [2], [4]]  # the affinity mask, not 0..n
    assert cpus_env([2, 3]) == {"FLEMME_CELL_CPUS": "2,3", "OMP_NUM_THREADS": "2"} and cpus_env(None) == {}


@pytest.mark.parametrize("workers,threads", [(5, None), (2, 3), (5, 1)])
def test_more_threads_than_cores_is_one_line(workers, threads):
    with pytest.raises(ConfigError, match=rf"--workers {workers} needs .* cores, this process may use 4; lower"):
        worker_cpus(workers, threads, [0, 1, 2, 3])


def test_a_cell_waits_for_the_cells_it_needs():
    # "b0" needs "a0" and is listed first; "c" needs nothing: two workers run a0 and c, then b0
    needs = {"b0": ["a0"], "a0": [], "c": []}
    queue = CellQueue(["b0", "a0", "c"], lambda c: needs[c], lambda c: c)
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(cell: str, cores: list[int] | None) -> None:
        with lock:
            events.append(("start", cell))
        time.sleep(0.2)
        with lock:
            events.append(("end", cell))

    run_workers(queue, [[0], [1]], work)
    assert events.index(("end", "a0")) < events.index(("start", "b0"))
    assert {e[1] for e in events if e[0] == "start"} == {"a0", "b0", "c"}
    assert [e for e in events if e[0] == "start"][:2] in ([("start", "a0"), ("start", "c")],
                                                          [("start", "c"), ("start", "a0")])


def test_an_error_in_one_worker_stops_the_others_and_is_raised():
    queue = CellQueue(["bad", "slow", "never"], lambda c: [], lambda c: c)
    started: list[str] = []

    def work(cell: str, cores: list[int] | None) -> None:
        started.append(cell)
        if cell == "bad":
            raise ConfigError("bad cell")
        for _ in range(50):  # a running cell notices the stop (as run_cell's progress callback does)
            if queue.stopped.is_set():
                return
            time.sleep(0.02)

    with pytest.raises(ConfigError, match="bad cell"):
        run_workers(queue, [[0], [1]], work)
    assert "never" not in started
