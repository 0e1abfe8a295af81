"""The benchmarks' shared training-step helpers (flemme_core.training.profiling) do what a
hand-written loop does: same weights after the same steps, timings of the measured steps only."""

from __future__ import annotations

import copy

import pytest
import torch

from flemme_core import build_model
from flemme_core.training.profiling import fit_in_memory, step_loss, timed_training_steps


def _tiny():
    return build_model({"arch": "unet", "encoder": {"name": "tiny", "channels": [4, 8], "norm": "instance"},
                        "image_size": 16})


def _batch(step: int = 0):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(2, 1, 16, 16, generator=g)
    return {"image": x, "label": (x > 0).long()}


def test_fit_in_memory_matches_a_hand_written_loop():
    model = _tiny()
    reference = copy.deepcopy(model)
    report = fit_in_memory(model, _batch, steps=3, lr=1e-2, weight_decay=0.0, clip=0.0)
    assert report["main"]["steps"] == 3 and report["main"]["cpu_s"] > 0
    reference.train()
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(3):
        loss = step_loss(reference, _batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_fit_in_memory_cpu_budget_and_cosine():
    report = fit_in_memory(_tiny(), _batch, cpu_budget_s=0.3, schedule="cosine", steps=None)
    assert report["main"]["steps"] >= 1


def test_timed_training_steps_counts_only_measured_steps_and_takes_a_peer():
    t = timed_training_steps(_tiny(), _batch, steps=3, warmup=2)
    assert len(t.wall) == len(t.cpu) == 3 and t.median_wall > 0 and t.peak_rss_mb > 0
    peer = torch.nn.Conv2d(1, 2, 3, padding=1)  # a plain network: a criterion is required
    t = timed_training_steps(peer, _batch(), criterion=lambda out, y: torch.nn.functional.cross_entropy(out, y[:, 0]),
                             steps=2)
    assert len(t.wall) == 2 and t.loss == t.loss
    with pytest.raises(ValueError, match="criterion"):
        timed_training_steps(peer, _batch(), steps=1)
