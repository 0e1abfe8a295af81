"""Issue 20, disk faults: read-only outputs and full disks are one line naming the path and the fix,
found before work starts where possible; a failed checkpoint keeps the last good one, resumable.

A read-only file system is simulated by making ``os.open``/``os.mkdir`` fail with EROFS
under one folder (tests may run as root, for whom permission bits do not stop writes);
a full disk by making the safetensors writer raise ENOSPC (or safetensors' own error).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
from reliability_helpers import one_error, quick, run, trained_folder
from safetensors.torch import load_file
from train_helpers import write_config

QUICK = quick(steps=4, save_every=1)


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: creating anything inside ``folder`` fails with EROFS."""
    roots: list[str] = []
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        path = os.path.abspath(os.fspath(path))
        return any(path.startswith(r + os.sep) for r in roots)

    def fake_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return lambda folder: roots.append(os.path.abspath(folder))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_folder(tmp_path_factory.mktemp("disk"), QUICK)


def test_train_into_a_read_only_place_is_one_line(tmp_path, read_only):
    cfg = write_config(tmp_path / "cfg.yaml", QUICK)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "empty").mkdir()
    read_only(tmp_path / "ro")
    one_error(run("train", cfg, "-o", tmp_path / "ro" / "new", "-q"), "cannot create the run folder",
              str(tmp_path / "ro" / "new"), "Read-only file system", "--output")
    one_error(run("train", cfg, "-o", tmp_path / "ro" / "empty", "-q"), "cannot write in the run folder",
              "Read-only file system")
    assert not (tmp_path / "ro" / "new").exists() and not list((tmp_path / "ro" / "empty").iterdir())


def test_resume_in_a_read_only_run_folder_is_one_line(trained, read_only):
    before = {p.name: p.read_bytes() for p in (trained / "run").iterdir() if p.is_file()}
    read_only(trained / "run")
    one_error(run("train", trained / "cfg.yaml", "-o", trained / "run", "-q", "--resume"), "run folder",
              "Read-only file system")
    assert {p.name: p.read_bytes() for p in (trained / "run").iterdir() if p.is_file()} == before


def test_eval_json_into_a_read_only_folder_fails_before_evaluating(trained, tmp_path, read_only, monkeypatch):
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    from flemme_core.training import inference

    monkeypatch.setattr(inference, "evaluate_checkpoint", lambda *a, **k: pytest.fail("evaluated first"))
    result = run("eval", trained / "run" / "last.safetensors", "--json", tmp_path / "ro" / "m.json")
    one_error(result, "--json", str(tmp_path / "ro"), "Read-only file system")
    assert result.stdout == ""  # no metrics printed before the failure
    one_error(run("eval", trained / "run" / "last.safetensors", "--json", tmp_path / "nowhere" / "m.json"),
              "does not exist")


def test_predict_into_a_read_only_place_fails_before_reading(trained, tmp_path, read_only):
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    ckpt, img = trained / "run" / "last.safetensors", trained / "img.png"
    one_error(run("predict", ckpt, img, "-o", tmp_path / "ro" / "p.png"), "--output", "Read-only file system")
    one_error(run("predict", ckpt, img, img, "-o", tmp_path / "ro" / "preds"), "--output folder",
              "Read-only file system")
    assert not list((tmp_path / "ro").iterdir())


def _safetensor_error():
    from safetensors import SafetensorError

    return SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                           '"No space left on device" })')


@pytest.mark.parametrize("fault", ["oserror", "safetensors"])
def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one_resumable(tmp_path, monkeypatch, fault):
    cfg = write_config(tmp_path / "cfg.yaml", QUICK)
    calls = {"n": 0}
    real = safetensors.torch.save_file

    def failing(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:  # step 1: state file, last.safetensors; step 2's state file: the disk is full
            Path(filename).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if fault == "oserror" else _safetensor_error()
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    line = one_error(run("train", cfg, "-o", tmp_path / "run", "-q"), "No space left on device",
                     "checkpoint at step 2", "intact", "--resume")
    assert "state-000000002" in line
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "state.json").read_text())["step"] == 1
    assert not list(run_dir.glob(".*.tmp"))  # the half-written temporary file is gone
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    resumed = run("train", cfg, "-o", run_dir, "-q", "--resume")
    assert resumed.exit_code == 0, resumed.output
    straight = run("train", cfg, "-o", tmp_path / "straight", "-q")
    assert straight.exit_code == 0
    a, b = load_file(str(run_dir / "last.safetensors")), load_file(str(tmp_path / "straight" / "last.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_a_write_failing_outside_atomic_writes_is_one_line(trained, tmp_path, monkeypatch):
    """e.g. the prediction writer itself hitting a full disk."""
    from flemme_core import data

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "p.png"))

    monkeypatch.setattr(data, "write_prediction", full)
    one_error(run("predict", trained / "run" / "last.safetensors", trained / "img.png", "-o", tmp_path / "p.png"),
              "No space left on device", "p.png")
