"""Run folders that one process owns at a time and whose files flemme knows it wrote.

Public API (torch-free, import-cheap), for the trainer and for tools that run many
trainings (``flemme compare`` cells):

* :class:`RunLock` / :func:`run_folder_lock` -- an exclusive lock on a run folder, held
  for the life of a run. It is an advisory ``flock`` on ``<run>/.flemme.lock`` (the
  file also records the holder's PID and command), so the operating system releases it
  when the holder exits in any way, SIGKILL included: a lock file left behind by a dead
  process is stale and simply taken over. A second process is refused with one
  :class:`~flemme_core.errors.RunFolderBusy` line naming the holder's PID. Within one
  process the lock is re-entrant (a study tool may hold it around ``train()``, which
  takes it again). ``flemme train --nproc N`` takes it in the launching process and
  tells its workers through ``FLEMME_RUN_LOCK_HELD``. A folder the lock had to create
  and that is empty again on release is removed, so a run refused by its checks
  leaves nothing behind.

  ::

      from flemme_core.training.runfolder import run_folder_lock
      with run_folder_lock("runs/cell-3"):      # RunFolderBusy if another process has it
          train(run_config)                     # takes the same lock again (re-entrant)

* :func:`is_flemme_run`, :func:`foreign_files`, :func:`claim`, :func:`clear_run_files`,
  :func:`clean_stale_tmp` -- the ownership marker ``<run>/.flemme-run.json``, written when
  a run starts in a folder. flemme replaces or deletes only files it writes (the names in
  :data:`RUN_FILES`, ``state-*.safetensors``, ``tensorboard/``), and only in a folder
  that carries the marker; a folder holding such names without the marker belongs to
  the user and is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FlemmeError

LOCK_FILE = ".flemme.lock"
MARKER_FILE = ".flemme-run.json"
MARKER_FORMAT = "flemme-run/1"
#: environment variable by which a launching process tells its workers it holds the lock.
HELD_ENV = "FLEMME_RUN_LOCK_HELD"
#: the files a run writes (and --overwrite deletes); never the folder itself.
RUN_FILES = ("config.yaml", "state.json", "last.safetensors", "best.safetensors", "metrics.jsonl",
             "curves.png", "overlay.png", "eval.json", "summary.json")
STATE_GLOB = "state-*.safetensors"
RUN_DIRS = ("tensorboard",)


class RunFolderBusy(FlemmeError):
    """Another process is using the run folder (it holds the run-folder lock)."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


_HELD: dict[str, list[Any]] = {}  # resolved folder -> [RunLock, depth] for re-entrancy
_HELD_GUARD = threading.Lock()


class RunLock:
    """Exclusive, re-entrant (per process) lock on a run folder; see the module docstring.

    ``acquire()`` creates the folder when needed (remembering that it did), takes the
    lock or raises :class:`RunFolderBusy`; ``release()`` (also on ``__exit__``) drops
    it, removes the lock file and, if the lock created the folder and it is empty again,
    the folder.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path / LOCK_FILE
        self._fd: int | None = None
        self._created = False
        self._inherited = False

    @property
    def key(self) -> str:
        return str(self.path.resolve())

    def acquire(self) -> RunLock:
        with _HELD_GUARD:
            held = _HELD.get(self.key)
            if held is not None:
                held[1] += 1
                return held[0]
            if os.environ.get(HELD_ENV) == self.key:  # the launching flemme process holds it for us
                self._inherited = True
            else:
                self._lock()
            _HELD[self.key] = [self, 1]
            return self

    def _lock(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"output {str(self.path)!r} is a file; choose a folder with --output")
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
                self._created = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise ConfigError(f"cannot create the run folder {str(self.path)!r} ({exc.strerror}); "
                                  "choose a writable place with --output") from None
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                self._remove_created()
                raise ConfigError(f"cannot write in the run folder {str(self.path)!r} ({exc.strerror}); "
                                  "make it writable or choose another --output") from None
            if not _try_lock(fd):
                os.close(fd)
                holder = _read_holder(self.lock_path)
                pid = holder.get("pid")
                who = f"process {pid}" if isinstance(pid, int) and _pid_alive(pid) else "another process"
                what = f" ({holder['command']})" if holder.get("command") else ""
                raise RunFolderBusy(f"run folder {str(self.path)!r} is in use by {who}{what}; wait for it to "
                                    "finish, stop it, or write elsewhere with --output")
            # the holder before us may have unlinked the file between our open and our lock: retry
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = json.dumps({"pid": os.getpid(), "command": " ".join(["flemme", *sys.argv[1:]])[:300],
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        os.ftruncate(fd, 0)
        os.write(fd, record.encode())
        self._fd = fd

    def release(self) -> None:
        with _HELD_GUARD:
            held = _HELD.get(self.key)
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del _HELD[self.key]
            owner: RunLock = held[0]
            if owner._fd is not None:
                try:
                    owner.lock_path.unlink(missing_ok=True)  # while still locked: nobody sees a free stale file
                except OSError:
                    pass
                os.close(owner._fd)  # releases the flock
                owner._fd = None
            owner._remove_created()

    def _remove_created(self) -> None:
        if self._created:
            try:
                self.path.rmdir()  # only if empty: a refused run leaves nothing behind
            except OSError:
                pass
            self._created = False

    def __enter__(self) -> RunLock:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: msvcrt byte-range lock
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock (some network mounts): fall back to the PID record
        holder = _read_holder_fd(fd)
        pid = holder.get("pid")
        return not (isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid))


def _read_holder_fd(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def run_folder_lock(path: str | Path) -> Iterator[RunLock]:
    """``with run_folder_lock(folder):`` -- hold the run-folder lock (see :class:`RunLock`)."""
    lock = RunLock(path)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def held(path: str | Path) -> bool:
    """Whether this process holds (or inherited) the lock on ``path``."""
    return str(Path(path).resolve()) in _HELD


# -- ownership ------------------------------------------------------------------------------
def is_flemme_run(run_dir: str | Path) -> bool:
    """The folder carries flemme's run marker (or is a run written before the marker existed:
    a ``state.json`` in flemme's training-state format)."""
    run_dir = Path(run_dir)
    marker = run_dir / MARKER_FILE
    if marker.is_file():
        return _read_holder(marker).get("format") == MARKER_FORMAT
    state = run_dir / "state.json"
    if state.is_file():
        from .state import STATE_FORMAT

        return _read_holder(state).get("format") == STATE_FORMAT
    return False


def run_file_names(run_dir: str | Path) -> list[str]:
    """The names in ``run_dir`` that flemme writes (present ones only)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = [n for n in RUN_FILES + RUN_DIRS if (run_dir / n).exists()]
    return names + sorted(p.name for p in run_dir.glob(STATE_GLOB))


def foreign_files(run_dir: str | Path) -> list[str]:
    """Files flemme would replace but did not write: run-file names in a folder without the marker."""
    return [] if is_flemme_run(run_dir) else run_file_names(run_dir)


def refuse_foreign(run_dir: str | Path) -> None:
    """One line if the folder holds files of the user's that a run would replace."""
    names = foreign_files(run_dir)
    if names:
        raise ConfigError(f"output folder {str(run_dir)!r} holds files flemme did not write ({', '.join(names[:4])}"
                          f"{', ...' if len(names) > 4 else ''}); flemme never replaces them: choose a new or "
                          "empty folder with --output, or move those files")


def claim(run_dir: str | Path) -> None:
    """Mark the folder as a flemme run (atomic; kept across resumes)."""
    from ..checkpoint import atomic_write

    marker = Path(run_dir) / MARKER_FILE
    if marker.is_file():
        return
    text = json.dumps({"format": MARKER_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "files": list(RUN_FILES) + [STATE_GLOB] + [d + "/" for d in RUN_DIRS]}, indent=1)
    atomic_write(marker, lambda tmp: Path(tmp).write_text(text))


def clear_run_files(run_dir: str | Path) -> list[str]:
    """``--overwrite``: delete the run files of a marked flemme run (nothing else); returns the names."""
    run_dir = Path(run_dir)
    if not is_flemme_run(run_dir):
        refuse_foreign(run_dir)
        return []
    names = run_file_names(run_dir)
    for name in names:
        path = run_dir / name
        if path.is_dir() and name in RUN_DIRS:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file():
            path.unlink(missing_ok=True)
    return names


def clean_stale_tmp(run_dir: str | Path) -> list[str]:
    """Delete the temporary files of killed atomic writes (``.<run file>.*.tmp``); call with the lock held."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    ours = set(RUN_FILES) | {MARKER_FILE}
    removed = []
    for tmp in run_dir.glob(".*.tmp"):
        target = tmp.name[1:].rsplit(".", 2)[0]  # .<name>.<random>.tmp
        if target in ours or (target.startswith("state-") and target.endswith(".safetensors")):
            try:
                tmp.unlink()
                removed.append(tmp.name)
            except OSError:
                pass
    return removed
