"""The trainer learns, resumes bit-exactly after SIGKILL, and runs any architecture through
the contract (stages, own metrics) -- on generated data, in seconds."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import RESUMABLE, TINY_2D, TINY_3D, config, env, write_config

from flemme_core.training.config import run_config_from_dict
from flemme_core.training.optim import lr_factor, warmup_steps


def _train(data: dict, out: Path, **kwargs):
    from flemme_core.training import train

    run = run_config_from_dict(config(data, train={"output": str(out)}))
    return train(run, quiet=True, **kwargs)


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("train2d") / "run"
    return _train(TINY_2D, out), out


def test_2d_run_learns_and_writes_its_outputs(run_2d):
    summary, out = run_2d
    # 2 held-out generated images, 3 classes: an untrained net is near 0.2; 60 steps reach ~0.9
    assert summary["final"]["dice"] > 0.75, summary["final"]
    assert set(summary["final"]) >= {"dice", "miou", "hd95", "dice/disk-1", "dice/square-2"}
    for name in ("last.safetensors", "best.safetensors", "state.json", "metrics.jsonl", "curves.png",
                 "overlay.png", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [30, 60]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    best = summary["best"]
    assert best["score"] == max(r["dice"] for r in val) and best["step"] in (30, 60)
    meta_step = json.loads((out / "state.json").read_text())["step"]
    assert meta_step == 60


def test_3d_run_learns(tmp_path):
    summary = _train(TINY_3D, tmp_path / "run")
    assert summary["final"]["dice"] > 0.7, summary["final"]
    assert summary["task"] == "segmentation"


def test_checkpoint_metadata_rebuilds_the_model(run_2d):
    from flemme_core.checkpoint import load_model

    _, out = run_2d
    model = load_model(out / "best.safetensors")
    extra = model.checkpoint_metadata["extra"]
    assert extra["roi_size"] == [48, 48] and extra["task"] == "segmentation"
    assert extra["data"]["preset"] == "synthetic-2d"
    assert model.config.out_channels == 3 and model.config.in_channels == 1


def test_schedule_warmup_then_cosine_to_min():
    total, warm = 100, warmup_steps(0.1, 100)
    assert warm == 10
    assert lr_factor(0, total, warm, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, total, warm, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(55, total, warm, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(100, total, warm, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, total, warm, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(70, total, 0, "constant", 0.0) == 1.0


def test_optimizer_state_round_trips_without_pickle():
    from flemme_core.training.state import flatten_optimizer, unflatten_optimizer

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    for _ in range(3):
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    tensors, info = flatten_optimizer(opt)
    json.dumps(info)  # JSON, not pickle
    fresh = torch.optim.AdamW(net.parameters(), lr=0.5)
    unflatten_optimizer(fresh, tensors, info)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 0.1
    for k in a["state"]:
        for key in a["state"][k]:
            assert torch.equal(torch.as_tensor(a["state"][k][key]), torch.as_tensor(b["state"][k][key]))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _step(state: Path) -> int:
    return json.loads(state.read_text())["step"] if state.exists() else -1


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    """Kill a run with SIGKILL right after a commit and then between two commits, resume, compare bit for bit.

    Kill moments are tied to observed commits, not wall-clock delays, so a fast machine cannot finish the
    run before the kill lands."""
    cfg = write_config(tmp_path / "run.yaml", RESUMABLE)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    cmd = [sys.executable, "-m", "flemme_core", "train", str(cfg), "-q"]
    _train(RESUMABLE, ref)  # uninterrupted reference, in this process (same code, same 1 thread)
    state = killed / "state.json"
    kills = 0
    for commits_to_see, mid_interval in ((1, False), (2, True)):
        resume = ["--resume"] if killed.exists() else []  # --resume into a missing folder is refused
        proc = subprocess.Popen(cmd + ["-o", str(killed), *resume], env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        seen, last, times = 0, _step(state), []
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and seen < commits_to_see:
            now = _step(state)
            if now > last:
                seen, last = seen + 1, now
                times.append(time.monotonic())
            time.sleep(0.005)
        if mid_interval and len(times) == 2:
            time.sleep((times[1] - times[0]) / 2)  # half-way to the next commit: work since it is lost
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 2
    assert json.loads((killed / "state.json").read_text())["step"] < RESUMABLE["train"]["steps"]
    done = subprocess.run(cmd + ["-o", str(killed), "--resume"], check=False, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    a, b = _weights(ref / "last.safetensors"), _weights(killed / "last.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    ra = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in ra] == [(r["step"], r["split"]) for r in rb]  # no duplicated rows
    assert math.isclose(ra[-1]["dice"], rb[-1]["dice"], abs_tol=1e-6)


def test_bf16_autocast_on_cpu(tmp_path):
    data = config(TINY_2D, train={"steps": 3, "val_every": 0, "amp": "bf16"},
                  data={"options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32]})
    summary = _train(data, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[0]["loss"]) and 0.0 <= summary["final"]["dice"] <= 1.0


def test_tensorboard_events_are_written_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    data = config(TINY_2D, train={"steps": 2, "val_every": 0, "tensorboard": True, "log_every": 1},
                  data={"options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32]})
    _train(data, tmp_path / "run")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
