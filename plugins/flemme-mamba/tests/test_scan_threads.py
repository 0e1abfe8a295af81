"""The C++ scan's thread policy: never more threads than the cores other work leaves idle."""

import os

import pytest
import torch
from flemme_mamba.scan import cpu


@pytest.fixture
def machine(monkeypatch):
    def set_(cores: int, load: float, last: int = 1, threads: int = 4):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        monkeypatch.setattr(cpu, "_last_threads", last)
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        monkeypatch.delenv("FLEMME_MAMBA_THREADS", raising=False)
    return set_


@pytest.mark.parametrize(("cores", "load", "last", "threads", "expected"), [
    (2, 0.1, 1, 2, 2),    # idle machine: torch's count
    (2, 2.0, 2, 2, 2),    # the load is our own two scan threads: keep them
    (2, 5.0, 1, 2, 1),    # oversubscribed by others: one thread, which never loses to one thread
    (8, 3.0, 1, 8, 6),    # others use ~2 cores: the 6 idle ones
    (4, 0.0, 1, 1, 1),    # torch set to one thread
])
def test_threads_follow_the_idle_cores(machine, cores, load, last, threads, expected):
    machine(cores, load, last, threads)
    assert cpu.scan_threads() == expected


def test_environment_fixes_the_count(machine, monkeypatch):
    machine(2, 9.0)
    monkeypatch.setenv("FLEMME_MAMBA_THREADS", "3")
    assert cpu.scan_threads() == 3
