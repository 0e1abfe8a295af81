"""Disk faults as one-line errors: read-only or missing output folders, full disks, no permission.

Two halves. Before work starts, :func:`check_output_file` / :func:`check_output_folder`
probe that an output can be created (a real create-and-delete in the folder, so a
read-only mount, a full quota or a missing parent is found before minutes of
evaluation, not after). While writing, :func:`as_output_error` turns the ``OSError`` --
or the ``SafetensorError`` wrapping one -- of a failed write into an
:class:`~flemme_core.errors.OutputError` naming the path and what to do; atomic writes
(:func:`flemme_core.checkpoint.atomic_write`) use it, so the previous file is kept and
the message says so. Import-cheap: no torch.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from .errors import OutputError

#: errors that mean "this place cannot take the file", as opposed to a bug.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOENT, errno.ENOTDIR,
               errno.EISDIR, getattr(errno, "EDQUOT", errno.ENOSPC)}
_ADVICE = {errno.ENOSPC: "free disk space or write elsewhere", errno.EROFS: "choose a writable place",
           errno.EACCES: "make it writable or choose another place", errno.EPERM: "make it writable or choose "
           "another place", errno.EFBIG: "write to a file system that allows large files",
           getattr(errno, "EDQUOT", errno.ENOSPC): "free space in your quota or write elsewhere"}


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return exc.errno
    if type(exc).__name__ == "SafetensorError":  # Rust io::Error, e.g. "IoError(Os { code: 28, ... })"
        match = re.search(r"Os \{ code: (\d+)", str(exc))
        if match and int(match.group(1)) in DISK_ERRNOS:
            return int(match.group(1))
    return None


def as_output_error(exc: BaseException, path: str | Path | None = None, kept: str = "") -> OutputError | None:
    """The one-line error for a failed write (``None`` if ``exc`` is not a disk fault).

    ``kept`` says what survived (e.g. "the previous last.safetensors is unchanged").
    """
    code = _errno_of(exc)
    if code is None:
        return None
    where = path if path is not None else getattr(exc, "filename", None) or "the output"
    advice = _ADVICE.get(code, "check the path and choose a writable place")
    return OutputError(f"cannot write {str(where)!r}: {os.strerror(code)}; {advice}" + (f"; {kept}" if kept else ""))


def _probe(folder: Path) -> None:
    """Create and delete a file in ``folder`` (what a write will need)."""
    probe = folder / f".flemme-write-test.{os.getpid()}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    os.unlink(probe)


def check_output_folder(folder: str | Path, what: str) -> None:
    """``folder`` (or, if it does not exist yet, its nearest existing parent) can take new files."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{what} {str(folder)!r} cannot be created: {str(existing)!r} is a file; choose "
                          "another place")
    try:
        _probe(existing)
    except OSError as exc:
        error = as_output_error(exc, existing)
        if error is None:
            raise
        raise OutputError(f"{what} {str(folder)!r} is not writable ({os.strerror(exc.errno)} in {str(existing)!r}); "
                          f"{_ADVICE.get(exc.errno, 'choose a writable place')}") from None


def check_output_file(path: str | Path, what: str) -> None:
    """The file ``path`` can be written: its folder exists and is writable, and it is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise OutputError(f"{what} {str(path)!r}: the folder {str(path.parent)!r} does not exist; create it first "
                          "or choose another place")
    check_output_folder(path.parent, what)
