"""Two processes (torchrun, gloo on CPU) give the result of one process with the same
global batch: the same data order, gradients averaged, held-out metrics reduced."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from train_helpers import TINY_2D, config, flemme, write_config

from flemme_core.training.config import run_config_from_dict

DDP_RUN = config(TINY_2D, train={"steps": 8, "val_every": 4, "save_every": 4, "log_every": 4},
                 data={"options": {"num_train": 6, "num_held_out": 2, "size": [32, 32]}, "patch_size": [32, 32],
                       "batch_size": 4, "transforms": {"flip": 0.5}})


def test_two_gloo_processes_match_one_process(tmp_path):
    from flemme_core.training import train

    one = train(run_config_from_dict(config(DDP_RUN, train={"output": str(tmp_path / "one")})), quiet=True)
    cfg = write_config(tmp_path / "run.yaml", DDP_RUN)
    done = flemme("train", str(cfg), "-o", str(tmp_path / "two"), "-q", "--nproc", "2", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst  # float sums in another order; identical batches and seeds
    for key in ("dice", "miou", "dice/disk-1", "dice/square-2"):
        assert two["final"][key] == pytest.approx(one["final"][key], abs=2e-3), key
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [(4, "train"), (4, "val"), (8, "train"), (8, "val")]
    ref = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(ref[0]["loss"], rel=1e-4)  # the ranks' mean = the global batch's


def test_batch_not_divisible_by_processes_is_refused(tmp_path):
    cfg = write_config(tmp_path / "run.yaml", config(DDP_RUN, data={"batch_size": 3}))
    done = flemme("train", str(cfg), "-o", str(tmp_path / "r"), "-q", "--nproc", "2", timeout=600)
    assert done.returncode != 0
    assert "must be divisible by the 2 processes" in done.stderr
