"""Shared fixtures of the flemme-mamba tests: deterministic, 2 threads, inputs like Mamba's."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
