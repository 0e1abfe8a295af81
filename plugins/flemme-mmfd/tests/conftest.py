"""Registers the probe test plugin (see mmfd_testutil) for the whole session."""

from __future__ import annotations

import pytest
import torch
from mmfd_testutil import ProbePlugin

import flemme_core

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def probe_plugin():
    plugin = ProbePlugin()
    flemme_core.register_plugin(plugin, "probe-plugin")
    yield plugin
    flemme_core.unregister_plugin(plugin)
