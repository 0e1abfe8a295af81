"""The ``register_onnx_ops`` hook: plugins' ONNX custom-op domains reach the exporter (offered to
modules through ``export_mode``, left out with a note when their library cannot be built, none
with ``portable``) and every ONNX Runtime session of the core (a missing domain is one line).
A fake plugin here, so the core is tested without any real plugin; mamba's fused scan is
tested end to end in plugins/flemme-mamba/tests/test_ort_op.py."""

from __future__ import annotations

import types

import pytest
from torch import nn

import flemme_core
from flemme_core import hookimpl
from flemme_core.export import custom_ops
from flemme_core.export.modes import custom_domains, export_mode

LIBRARY = "/nonexistent/libfake_ops.so"


def _broken_library() -> str:
    raise RuntimeError("no C++ compiler found (set CXX or install g++)\nsecond line")


@pytest.fixture
def fake_domains():
    ops = {"test.works": custom_ops.OnnxCustomOps("test.works", lambda: LIBRARY, lambda: {"torch-op": "fn"}),
           "test.broken": custom_ops.OnnxCustomOps("test.broken", _broken_library, lambda: {"other": "fn"})}

    def register_onnx_ops(register):
        for name, value in ops.items():
            register(name, lambda value=value: value, f"{name} ops")

    plugin = types.SimpleNamespace(register_onnx_ops=hookimpl(register_onnx_ops))
    flemme_core.register_plugin(plugin, name="fake-onnx-ops")
    yield ops
    flemme_core.unregister_plugin(plugin)


class _Options:
    """Stands for ``onnxruntime.SessionOptions``: records the libraries registered."""

    def __init__(self):
        self.libraries: list[str] = []

    def register_custom_ops_library(self, path: str) -> None:
        self.libraries.append(path)


def test_register_onnx_ops(fake_domains):
    """Buildable domains are offered to the export with their translations; others get a note."""
    found = custom_ops.providers()
    assert {"test.works", "test.broken"} <= set(found)
    domains, table, notes = custom_ops.for_export(portable=False)
    assert "test.works" in domains and "test.broken" not in domains
    assert table["torch-op"] == "fn" and "other" not in table
    [note] = [n for n in notes if "test.broken" in n]
    assert "no C++ compiler" in note and "\n" not in note
    assert custom_ops.for_export(portable=True) == ([], {}, [])


def test_modules_see_the_offered_domains_only_inside_an_onnx_export():
    seen = []

    class Probe(nn.Module):
        def export_mode(self, fmt):
            import contextlib

            @contextlib.contextmanager
            def mode():
                seen.append((fmt, custom_domains()))
                yield None

            return mode()

    model = nn.Sequential(Probe())
    with export_mode(model, "onnx", ["test.works"]):
        assert custom_domains() == {"test.works"}
    with export_mode(model, "torch-export", ["test.works"]):
        pass
    assert seen == [("onnx", {"test.works"}), ("torch-export", frozenset())]
    assert custom_domains() == frozenset()


def test_sessions_register_the_needed_libraries_and_a_missing_domain_is_one_line(fake_domains):
    options = _Options()
    custom_ops.register_libraries(options, ["test.works"], "m.onnx")
    assert options.libraries == [LIBRARY]
    custom_ops.register_libraries(options, [], "m.onnx")
    assert options.libraries == [LIBRARY]
    for domain, needle in (("test.absent", "no installed plugin provides"), ("test.broken", "no C++ compiler")):
        with pytest.raises(custom_ops.MissingCustomOps) as err:
            custom_ops.register_libraries(options, [domain], "m.onnx")
        message = str(err.value)
        assert "\n" not in message and repr(domain) in message and needle in message
        assert "flemme export --portable" in message


def test_a_factory_giving_another_domain_is_a_plugin_error():
    plugin = types.SimpleNamespace(register_onnx_ops=hookimpl(
        lambda register: register("test.a", lambda: custom_ops.OnnxCustomOps("test.b", str, dict))))
    flemme_core.register_plugin(plugin, name="bad-onnx-ops")
    try:
        with pytest.raises(flemme_core.FlemmeError, match="register_onnx_ops"):
            custom_ops.providers()
    finally:
        flemme_core.unregister_plugin(plugin)
