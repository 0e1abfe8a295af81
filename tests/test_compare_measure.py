"""How many whole-image inferences the study's ``infer ms`` column costs a cell."""

from __future__ import annotations

import time

import pytest

from flemme_core.compare import measure


@pytest.mark.parametrize("seconds,runs", [(0.001, 1 + 3), (0.3, 1 + 2)])
def test_slow_inference_is_timed_fewer_times(monkeypatch, seconds, runs):
    from flemme_core.training import evaluation

    calls = []

    def fake_infer(model, image, settings):
        calls.append(1)
        time.sleep(seconds)

    monkeypatch.setattr(evaluation, "infer", fake_infer)
    ms = measure.inference_ms(None, None, None, enough_seconds=0.5)
    assert len(calls) == runs  # a warm-up, then 3 runs, or as many as add up to 0.5 s
    assert ms == pytest.approx(1000 * seconds, rel=0.5, abs=5)
