"""``train.max_seconds``: the trainer's own wall-clock budget (what ``flemme compare --budget
seconds=S`` sets): it stops training when the steps' time is spent, runs the schedule on the
time, and reports what it did."""

from __future__ import annotations

import itertools
import json

import pytest
from train_helpers import TINY_2D, config

from flemme_core.errors import ConfigError
from flemme_core.training import train
from flemme_core.training.config import run_config_from_dict


def test_max_seconds_stops_the_run_and_the_schedule_follows_the_time(tmp_path):
    budget = 3.0
    cfg = config(TINY_2D, train={"steps": 1_000_000, "max_seconds": budget, "val_every": 0, "log_every": 1,
                                 "warmup": 0, "schedule": "cosine", "lr": 0.01,
                                 "save_every": 5})
    run = run_config_from_dict(cfg)
    run.train.output = str(tmp_path / "run")
    summary = train(run, quiet=True)
    assert summary["stopped_by"] == "seconds" and summary["max_seconds"] == budget
    steps = summary["steps_trained"]
    assert 2 <= steps < 1_000_000
    # it stops at the first step that starts after the budget is spent
    assert budget <= summary["train_seconds"] <= budget + 5 * summary["seconds_per_step"] + 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r.get("split") == "train"]
    assert len(lrs) == steps
    # cosine over the time: decreasing, and near its end at the last step (a million steps would not be)
    assert all(b <= a for a, b in itertools.pairwise(lrs))
    assert lrs[-1] < 0.5 * 0.01 and lrs[0] > 0.9 * 0.01
    # the held-out curve and `best` show where training stopped, not the planned million steps
    assert [r["step"] for r in rows if r.get("split") == "val"] == [steps]
    assert summary["best"]["step"] == steps
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["finished"] and state["steps_trained"] == steps and state["stopped_by"] == "seconds"


def test_max_seconds_is_checked():
    with pytest.raises(ConfigError, match="train.max_seconds must be"):
        run_config_from_dict(config(TINY_2D, train={"max_seconds": -1}))
    with pytest.raises(ConfigError, match="train.max_seconds must be"):
        run_config_from_dict(config(TINY_2D, train={"max_seconds": 0}))
