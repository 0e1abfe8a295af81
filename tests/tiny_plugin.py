"""The test suite's plugin module: registers the ``tiny`` family (``tiny_family.py``) lazily,
so that ``flemme --help`` in a test subprocess still imports no torch."""

from flemme_core import hookimpl


@hookimpl
def register_encoders(register) -> None:
    register("tiny", "tiny_family:encoder", "the core test suite's own small conv family (tests/tiny_family.py)")
