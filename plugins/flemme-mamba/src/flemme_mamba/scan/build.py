"""Compile the CPU scan kernel on first use and cache the shared library.

The kernel is plain C++ with a C ABI (no torch headers), compiled by the system C++
compiler once per machine (5-7 s of compiler CPU time at -O3 with its specialisations,
measured by ``benchmarks/bench_mamba_scan.py``; longer in wall time on a loaded machine)
and loaded with :mod:`ctypes`; a torch extension would spend 40-50 s compiling its
headers on every cold CI run. A failed build is recorded in the cache (``FAILED.txt``)
and retried once by a later process (see ``BUILD_ATTEMPTS``); every message names the
cache folder. The library is cached under
``$FLEMME_MAMBA_CACHE`` (default ``~/.cache/flemme_mamba``) in a folder named by a hash of
the source, the flags, the compiler and the CPU, so a changed source or a different
machine sharing the home folder never loads a stale or illegal build.

``FLEMME_MAMBA_NO_CPP=1`` skips the kernel (the pure-PyTorch scan is used instead).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

SOURCE = Path(__file__).with_name("csrc") / "selective_scan.cpp"
ABI_VERSION = 2
BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno"]
# Tried in order: OpenMP (shares torch's libgomp thread pool) and the host's vector units,
# then without OpenMP (std::thread), then portable code.
FLAG_CHOICES = [BASE_FLAGS + ["-fopenmp", "-march=native"], BASE_FLAGS + ["-march=native"], BASE_FLAGS]
# A failed build (per source, flags, compiler and CPU) is retried once in a later process: a
# transient cause (out of memory, a full disk) does not disable the kernel for good, and a
# real one (a broken toolchain) does not cost a compile on every run.
BUILD_ATTEMPTS = 2


class KernelUnavailable(RuntimeError):
    """The C++ kernel cannot be built or loaded here (no compiler, build error, ...)."""


class ScanArgs(ctypes.Structure):
    """Mirror of ``struct ScanArgs`` in selective_scan.cpp."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "u", "dt", "A", "B", "C", "D", "out", "ckpt", "dout", "du", "ddt", "dA", "dD", "dB", "dC")] + [
        (name, ctypes.c_int64) for name in ("batch", "channels", "groups", "length", "dstate", "chunk", "nthreads")]


def cache_dir() -> Path:
    return Path(os.environ.get("FLEMME_MAMBA_CACHE") or Path.home() / ".cache" / "flemme_mamba")


def find_compiler() -> str | None:
    """The C++ compiler to use: ``$CXX``, else c++, g++ or clang++ on the PATH."""
    for name in [os.environ.get("CXX", ""), "c++", "g++", "clang++"]:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _compile(cxx: str, flags: list[str], source: Path, target: Path) -> str:
    """Compile to a temporary file then rename, so concurrent builds never see half a library."""
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cxx, *flags, str(source), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}"
        os.replace(tmp, target)
        return ""
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{' '.join(cmd)} failed: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.flemme_scan_abi_version() != ABI_VERSION:
        raise KernelUnavailable(f"{path} has a different ABI version; delete {path.parent}")
    for name in ("flemme_scan_fwd_f32", "flemme_scan_fwd_f64", "flemme_scan_bwd_f32", "flemme_scan_bwd_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(ScanArgs)]
        fn.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=1)
def load_kernel() -> ctypes.CDLL:
    """Build (once per source, compiler and CPU) and load the kernel, or raise KernelUnavailable."""
    return build_library([SOURCE], "selective_scan.so", FLAG_CHOICES, _load)


T = TypeVar("T")


def build_library(sources: list[Path], filename: str, flag_choices: list[list[str]],
                  load: Callable[[Path], T]) -> T:
    """Compile ``sources[0]`` (the others are files it includes, hashed into the cache key) to
    ``filename`` in the cache, trying ``flag_choices`` in order, and return ``load(path)`` of
    the first build that loads; KernelUnavailable with every reason otherwise."""
    if os.environ.get("FLEMME_MAMBA_NO_CPP", "").lower() in ("1", "true", "yes"):
        raise KernelUnavailable("disabled by FLEMME_MAMBA_NO_CPP")
    cxx = find_compiler()
    if cxx is None:
        raise KernelUnavailable("no C++ compiler found (set CXX or install g++)")
    source = b"".join(path.read_bytes() for path in sources)
    errors = []
    for flags in flag_choices:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), _compiler_version(cxx).encode(),
                                         _cpu_signature().encode()])).hexdigest()[:16]
        folder = cache_dir() / key
        target, failed = folder / filename, folder / "FAILED.txt"
        attempts, previous = _read_failure(failed)
        if not target.exists():
            if attempts >= BUILD_ATTEMPTS:  # failed before and retried: do not compile on every run
                errors.append(f"{previous} (build failed {attempts} times; delete {folder} to try again)")
                continue
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KernelUnavailable(f"cannot create the kernel cache {folder}: {exc}") from None
            problem = _compile(cxx, flags, sources[0], target)
            if problem:
                errors.append(problem)
                _write_failure(failed, attempts + 1, problem)
                continue
        if attempts:
            try:
                failed.unlink(missing_ok=True)
            except OSError:
                pass
        try:
            return load(target)
        except OSError as exc:
            errors.append(f"loading {target} failed: {exc}")
    raise KernelUnavailable("; ".join(errors) + f" [kernel cache: {cache_dir()}, set by FLEMME_MAMBA_CACHE]")


def _read_failure(path: Path) -> tuple[int, str]:
    """(failed builds so far, the last error) recorded for one source/flags/compiler/CPU key."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0, ""
    first, _, rest = text.partition("\n")
    if first.startswith("attempts: ") and first[10:].strip().isdigit():
        return int(first[10:]), rest
    return BUILD_ATTEMPTS, text  # written by an older version: counts as retried


def _write_failure(path: Path, attempts: int, problem: str) -> None:
    """Record a failed build atomically; a full disk (maybe the cause) just skips the record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"attempts: {attempts}\n{problem}")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def kernel_problem() -> str:
    """Why the kernel is unavailable, or '' when it loads (builds it if needed)."""
    try:
        load_kernel()
    except KernelUnavailable as exc:
        return str(exc)
    return ""
