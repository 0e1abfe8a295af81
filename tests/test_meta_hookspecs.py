"""Every public hook spec has a test and a README entry with its exact signature (as datasette does)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from flemme_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
SPECS = [name for name, obj in vars(hookspecs).items()
         if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT}_spec")]


def test_there_are_hook_specs():
    assert {"register_encoders", "register_architectures", "register_losses", "register_fusions"} <= set(SPECS)


@pytest.mark.parametrize("name", SPECS)
def test_hook_is_documented_in_readme_with_signature(name):
    signature = f"{name}{inspect.signature(getattr(hookspecs, name)).replace(return_annotation=inspect.Signature.empty)}"
    assert f"`{signature}`" in (ROOT / "README.md").read_text(), f"README lacks `{signature}`"


@pytest.mark.parametrize("name", SPECS)
def test_hook_has_a_test(name):
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    pattern = re.compile(rf"def test_\w*{name}\b")
    assert any(pattern.search(p.read_text()) for p in tests), f"no test function named after {name}"


@pytest.mark.parametrize("name", SPECS)
def test_hook_has_a_docstring(name):
    assert (getattr(hookspecs, name).__doc__ or "").strip()
