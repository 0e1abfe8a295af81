"""``flemme train --nproc N``: start torchrun, own its whole process tree, report in one line.

* torchrun and its workers run in a session of their own, so the launching ``flemme``
  process is the only one a terminal's Ctrl-C (or a ``kill`` of the command) reaches; it
  forwards SIGINT/SIGTERM to the whole group and, once torchrun has exited, kills any
  process left in it: no worker outlives the command (on Linux, torchrun also gets SIGTERM
  if the launching process itself is killed).
* The workers know they were launched (``FLEMME_LAUNCHED``) and stay silent on a stop;
  the launcher prints the resume hint once and exits 130 (SIGINT) or 143 (SIGTERM).
* torchrun's and the workers' output is relayed line by line; once a failure starts
  (a traceback, torch.distributed.elastic's report) the rest of stderr is held back. A
  worker killed by a signal is then one ``Error:`` line naming its rank and the resume
  command; a worker's own flemme ``Error:`` line is shown as is; anything else (a bug)
  shows what was held back. ``FLEMME_DEBUG=1`` holds nothing back.

Import-cheap (no torch): it runs in the launching process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from .stops import LAUNCHED_ENV, resume_command

#: seconds torchrun gets to stop its workers after a forwarded stop before the group is killed.
STOP_GRACE = 30.0
_FAILURE = re.compile(r"^Traceback \(most recent call last\)|torch\.distributed\.elastic|ChildFailedError|"
                      r"^\[rank\d+\]:.*Traceback|^(?:\S+\.)?[A-Z]\w*(?:Error|Exception): ")


class _Relay(threading.Thread):
    """Copy one pipe to our stream; for stderr, hold everything back once a failure has started."""

    def __init__(self, source: IO[str], sink: IO[str], filtered: bool):
        super().__init__(daemon=True)
        self.source, self.sink, self.filtered = source, sink, filtered
        self.held: list[str] = []
        self.errors: list[str] = []  # flemme's own "Error: ..." lines (shown as they come)
        self.failing = False

    def run(self) -> None:
        for line in iter(self.source.readline, ""):
            if self.filtered and line.startswith("Error: "):
                self.errors.append(line.rstrip("\n"))
            elif self.filtered and (self.failing or _FAILURE.search(line)):
                self.failing = True
                self.held.append(line)
                continue
            self.sink.write(line)
            self.sink.flush()


def die_with_parent() -> None:
    """Linux: the calling process gets SIGTERM when its parent dies, even by SIGKILL (torchrun
    then stops its workers; a study's cell stops instead of training on without its lock)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def failed_rank(report: str) -> tuple[int | None, int | None]:
    """(rank, exit code) of torchrun's first observed failure ('Root Cause' section), if reported."""
    section = report.split("Root Cause", 1)[-1]
    rank = re.search(r"rank\s*:\s*(\d+)", section)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", section)
    return (int(rank.group(1)) if rank else None, int(code.group(1)) if code else None)


def launch(nproc: int, args: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Run ``torchrun --standalone --nproc_per_node N -m flemme_core <args>``; returns the exit status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "flemme_core", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env[LAUNCHED_ENV] = "1"
    debug = bool(os.environ.get("FLEMME_DEBUG"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509 - no threads yet
    relays = [_Relay(proc.stdout, sys.stdout, False), _Relay(proc.stderr, sys.stderr, not debug)]
    for relay in relays:
        relay.start()
    stop: dict[str, float | int] = {}

    def forward(signum: int, frame: object) -> None:
        stop.setdefault("signal", signum)
        stop.setdefault("since", time.monotonic())
        _kill_group(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if stop and time.monotonic() - float(stop["since"]) > STOP_GRACE:
                    _kill_group(proc.pid, signal.SIGKILL)
    finally:
        _kill_group(proc.pid, signal.SIGKILL)  # anything torchrun left behind in its session
        for s, handler in previous.items():
            signal.signal(s, handler)
        for relay in relays:
            relay.join(timeout=5)
    code = proc.returncode
    hint = resume_command(argv)
    err = relays[1]
    if stop:
        name = signal.Signals(int(stop["signal"])).name
        print(f"interrupted ({name}); continue with: {hint}", file=sys.stderr, flush=True)
        return 128 + int(stop["signal"])
    if code == 0 or err.errors:  # success, or a worker already said what is wrong in one line
        return code if code >= 0 else 128 - code
    rank, exit_code = failed_rank("".join(err.held))
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.Signals._value2member_map_ else f"signal {-exit_code}"
        print(f"Error: worker rank {rank} was killed by {name}; the run stopped at its last checkpoint: continue "
              f"with: {hint}", file=sys.stderr, flush=True)
        return 1
    sys.stderr.write("".join(err.held))  # a bug: show it as it came
    print(f"Error: worker rank {rank if rank is not None else '?'} failed (exit code {exit_code}); see above; "
          f"after fixing it, continue with: {hint}", file=sys.stderr, flush=True)
    return 1
