"""Shared helpers: reference models built with the reference packages, random weights, no downloads."""

from __future__ import annotations

import pytest
import torch
from flemme_timm.timm_import import import_timm


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def timm():
    return import_timm()
