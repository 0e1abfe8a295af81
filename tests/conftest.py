"""Shared fixtures: small, deterministic, no data downloads.

The core's tests build the ``tiny`` family defined in ``tiny_family.py`` (registered by ``tiny_plugin.py``), never a plugin's:
registered here in-process, and for the ``flemme`` subprocesses the tests start through
``FLEMME_PLUGIN_MODULES`` (with this folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tiny_plugin
import torch

import flemme_core

_HERE = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_HERE, os.environ.get("PYTHONPATH", "")) if p)
os.environ["FLEMME_PLUGIN_MODULES"] = ",".join(
    m for m in (os.environ.get("FLEMME_PLUGIN_MODULES", ""), "tiny_plugin") if m)
flemme_core.register_plugin(tiny_plugin, name="tiny-family")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield

