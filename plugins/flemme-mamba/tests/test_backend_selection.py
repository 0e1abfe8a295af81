"""Which kernel runs where: mamba-ssm only when it imports and tensors are on CUDA, the C++
kernel on CPU when it builds, the PyTorch scan otherwise (tested by monkeypatching)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from flemme_mamba import scan
from flemme_mamba.scan import build
from flemme_mamba.scan.reference import selective_scan_ref
from mamba_testutil import scan_inputs

from flemme_core.errors import ConfigError


@pytest.fixture
def fake_mamba_ssm(monkeypatch):
    """A stand-in mamba_ssm package whose selective_scan_fn records its calls."""
    calls = []

    def selective_scan_fn(*args, **kwargs):
        calls.append(args)
        return selective_scan_ref(*args[:5], *args[5:9])

    pkg = types.ModuleType("mamba_ssm")
    ops = types.ModuleType("mamba_ssm.ops")
    iface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    iface.selective_scan_fn = selective_scan_fn
    for name, mod in [("mamba_ssm", pkg), ("mamba_ssm.ops", ops), ("mamba_ssm.ops.selective_scan_interface", iface)]:
        monkeypatch.setitem(sys.modules, name, mod)
    scan.mamba_ssm_scan.cache_clear()
    yield calls
    scan.mamba_ssm_scan.cache_clear()


@pytest.fixture
def no_mamba_ssm(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # import raises ImportError
    scan.mamba_ssm_scan.cache_clear()
    yield
    scan.mamba_ssm_scan.cache_clear()


@pytest.fixture
def no_cpp(monkeypatch):
    monkeypatch.setattr(scan, "cpp_problem", lambda: "no C++ compiler found")
    scan._warn_once.cache_clear()


def test_mamba_ssm_absent_cuda_falls_back_to_torch(no_mamba_ssm):
    assert scan.mamba_ssm_scan() is None
    assert scan.select_backend("cuda") == "torch"
    assert scan.select_backend("cpu") == "cpp"
    assert "mamba-ssm not installed" in scan.describe_backend()
    with pytest.raises(ConfigError, match="mamba-ssm"):
        scan.select_backend("cuda", "mamba_ssm")


def test_mamba_ssm_present_is_used_only_for_cuda_tensors(fake_mamba_ssm):
    assert scan.select_backend("cuda") == "mamba_ssm"
    assert scan.select_backend("cpu") == "cpp"
    inputs = scan_inputs(1, 2, 4, 20, 8)
    out = scan.selective_scan(**inputs)  # CPU tensors: never the CUDA kernel
    assert not fake_mamba_ssm
    assert torch.allclose(out.double(), selective_scan_ref(**{k: (v.double() if torch.is_tensor(v) else v)
                                                             for k, v in inputs.items()}), atol=1e-4)


def test_selected_mamba_ssm_receives_mamba_ssm_arguments(fake_mamba_ssm, monkeypatch):
    monkeypatch.setattr(scan, "select_backend", lambda device, requested="auto", d_state=16: "mamba_ssm")
    inputs = scan_inputs(1, 2, 4, 20, 8)
    scan.selective_scan(**inputs)
    (args,) = fake_mamba_ssm
    assert args[0] is inputs["u"] and args[3] is inputs["B"] and args[8] is True  # delta_softplus


def test_no_compiler_selects_the_torch_scan_with_a_warning(no_cpp):
    with pytest.warns(RuntimeWarning, match="pure-PyTorch"):
        assert scan.select_backend("cpu") == "torch"
    assert "PyTorch chunked scan" in scan.describe_backend()
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        scan.select_backend("cpu", "cpp")
    inputs = scan_inputs(1, 2, 4, 20, 8)
    out = scan.selective_scan(**inputs)  # warned once per process, not per call
    ref = selective_scan_ref(**{k: (v.double() if torch.is_tensor(v) else v) for k, v in inputs.items()})
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_kernel_loader_reports_a_missing_compiler(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "find_compiler", lambda: None)
    monkeypatch.setenv("FLEMME_MAMBA_CACHE", str(tmp_path))
    build.load_kernel.cache_clear()
    try:
        assert "no C++ compiler" in build.kernel_problem()
    finally:
        build.load_kernel.cache_clear()


def _fake_compiler(path, body: str):
    """A stand-in compiler; ``--version`` answers, every compile is logged in ``<path>.calls``."""
    path.write_text('#!/bin/sh\n[ "$1" = --version ] && exit 0\necho called >> ' + str(path) + ".calls\n" + body)
    path.chmod(0o755)
    return path


def _calls(path) -> int:
    log = path.with_name(path.name + ".calls")
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_kernel_loader_reports_a_failing_compiler_and_retries_once(monkeypatch, tmp_path):
    fake = _fake_compiler(tmp_path / "fake-cxx", "echo 'fatal: broken toolchain' >&2\nexit 1\n")
    monkeypatch.setattr(build, "find_compiler", lambda: str(fake))
    monkeypatch.setattr(build, "FLAG_CHOICES", build.FLAG_CHOICES[:1])
    monkeypatch.setenv("FLEMME_MAMBA_CACHE", str(tmp_path / "cache"))
    build.load_kernel.cache_clear()
    try:
        problem = build.kernel_problem()
        assert "broken toolchain" in problem and f"kernel cache: {tmp_path / 'cache'}" in problem
        calls = _calls(fake)
        build.load_kernel.cache_clear()  # a second process retries once (a transient failure)
        assert "broken toolchain" in build.kernel_problem() and _calls(fake) > calls
        calls = _calls(fake)
        build.load_kernel.cache_clear()  # a third one does not compile again
        problem = build.kernel_problem()
        assert _calls(fake) == calls
        assert "build failed 2 times; delete" in problem and str(tmp_path / "cache") in problem
    finally:
        build.load_kernel.cache_clear()


def test_a_transient_build_failure_is_retried_and_the_kernel_then_loads(monkeypatch, tmp_path):
    built = build.load_kernel()._name  # the real kernel, built once for the whole test run
    build.load_kernel.cache_clear()
    fake = _fake_compiler(tmp_path / "fake-cxx", "echo 'No space left on device' >&2\nexit 1\n")
    monkeypatch.setattr(build, "find_compiler", lambda: str(fake))
    monkeypatch.setattr(build, "FLAG_CHOICES", build.FLAG_CHOICES[:1])
    monkeypatch.setenv("FLEMME_MAMBA_CACHE", str(tmp_path / "cache"))
    try:
        assert "No space left" in build.kernel_problem()
        assert list((tmp_path / "cache").glob("*/FAILED.txt"))
        # the disk was freed: the "compiler" now produces the library (copies the real one)
        _fake_compiler(fake, f'for a; do out="$a"; done\ncp {built} "$out"\n')
        build.load_kernel.cache_clear()
        assert build.kernel_problem() == ""
        assert not list((tmp_path / "cache").glob("*/FAILED.txt"))
    finally:
        build.load_kernel.cache_clear()


def test_env_var_disables_the_kernel(monkeypatch):
    monkeypatch.setenv("FLEMME_MAMBA_NO_CPP", "1")
    build.load_kernel.cache_clear()
    try:
        assert "FLEMME_MAMBA_NO_CPP" in build.kernel_problem()
    finally:
        build.load_kernel.cache_clear()


def test_unknown_backend_name_lists_choices():
    with pytest.raises(ConfigError, match="did you mean 'cpp'"):
        scan.select_backend("cpu", "cppp")


def test_built_kernel_is_reused_from_the_cache(monkeypatch):
    """After one build, loading again (a new process, or after a cache clear) never compiles."""
    assert build.kernel_problem() == ""
    build.load_kernel.cache_clear()

    def no_compile(*args, **kwargs):
        raise AssertionError("the cached kernel was rebuilt")

    monkeypatch.setattr(build, "_compile", no_compile)
    try:
        lib = build.load_kernel()
        assert lib.flemme_scan_abi_version() == build.ABI_VERSION
        assert str(build.cache_dir()) in lib._name
    finally:
        build.load_kernel.cache_clear()
