"""Faults, hostile input and concurrency (issue 20): every failure one line, nothing unbounded,
no two runs in one folder, nothing written that flemme does not own.

Only tmp folders, monkeypatched writers and small crafted files; slow cases are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from train_helpers import TINY_2D, config, env, one_error_line, write_config

from flemme_core.cli import main
from flemme_core.errors import ConfigError
from flemme_core.training import runfolder as R

QUICK = config(TINY_2D, train={"steps": 1, "val_every": 0},
               data={"options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32]})


def _train(tmp_path: Path, cfg: dict, *args: str, out: Path | None = None):
    path = write_config(tmp_path / "cfg.yaml", cfg)
    return CliRunner().invoke(main, ["train", str(path), "-o", str(out or tmp_path / "run"), "-q", *args])


# -- the run-folder lock ----------------------------------------------------------------------
HOLDER = """
import sys, time
from flemme_core.training.runfolder import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_refuses_a_second_process_and_is_released_when_the_holder_dies(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        with pytest.raises(R.RunFolderBusy, match=f"in use by process {proc.pid}"):
            R.RunLock(folder).acquire()
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs; the lock file stays behind, stale
        proc.wait()
    assert (folder / R.LOCK_FILE).exists()
    with R.run_folder_lock(folder) as lock:  # a dead holder's lock is taken over
        assert json.loads((folder / R.LOCK_FILE).read_text())["pid"] == os.getpid()
        with R.run_folder_lock(folder):  # re-entrant in one process
            pass
        assert R.held(folder) and lock.lock_path.exists()
    assert not (folder / R.LOCK_FILE).exists() and not R.held(folder)


def test_lock_created_folder_is_removed_when_left_empty(tmp_path):
    with R.run_folder_lock(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with R.run_folder_lock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # a folder the user made stays


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_second_train_into_a_busy_folder_is_refused_in_one_line(tmp_path, flag):
    first = _train(tmp_path, QUICK)
    assert first.exit_code == 0, first.output
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    proc = _holder(tmp_path / "run")  # a concurrent run holds the folder
    try:
        one_error_line(_train(tmp_path, QUICK, flag), "in use by process", str(proc.pid), "--output")
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # nothing appended, nothing deleted


def test_lock_on_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(R.LOCK_FILE):
            raise OSError(30, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(R.os, "open", read_only)
    (tmp_path / "ro").mkdir()
    one_error_line(_train(tmp_path, QUICK, out=tmp_path / "ro"), "cannot write", "Read-only file system", "--output")


# -- ownership of the folder's files --------------------------------------------------------
def test_a_folder_with_the_users_own_files_is_refused_and_left_intact(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    files = {"last.safetensors": b"my weights", "metrics.jsonl": b'{"mine": 1}\n', "notes.txt": b"notes"}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    for args in ((), ("--overwrite",)):
        one_error_line(_train(tmp_path, QUICK, *args, out=folder), "did not write", "last.safetensors",
                        "metrics.jsonl")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


def test_overwrite_never_deletes_a_non_flemme_config_folders_files(tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "config.yaml").write_text("my: own\n")
    (folder / "eval.json").write_text("{}")
    one_error_line(_train(tmp_path, QUICK, "--overwrite", out=folder), "did not write", "config.yaml")
    assert (folder / "eval.json").read_text() == "{}" and (folder / "config.yaml").read_text() == "my: own\n"


def test_overwrite_replaces_only_flemmes_files_and_cleans_stale_tmp(tmp_path):
    run = tmp_path / "run"
    assert _train(tmp_path, QUICK).exit_code == 0
    assert (run / R.MARKER_FILE).is_file()
    (run / "notes.txt").write_text("keep me")
    stale = [run / ".last.safetensors.abc123.tmp", run / ".state-000000001.safetensors.k_9x.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    (run / ".mine.tmp").write_text("not flemme's")
    assert _train(tmp_path, QUICK, "--overwrite").exit_code == 0
    assert (run / "notes.txt").read_text() == "keep me"
    assert not any(p.exists() for p in stale)
    assert (run / ".mine.tmp").exists()
    assert not (run / R.LOCK_FILE).exists()


def test_resume_into_a_missing_folder_is_refused(tmp_path):
    one_error_line(_train(tmp_path, QUICK, "--resume", out=tmp_path / "typo"), "--resume", "does not exist")
    assert not (tmp_path / "typo").exists()


def test_a_run_refused_after_claiming_leaves_nothing_behind(tmp_path, monkeypatch):
    """issue 19: a check that fails before training (tensorboard missing) leaves no config.yaml."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    cfg = config(QUICK, train={"tensorboard": True})
    one_error_line(_train(tmp_path, cfg), "tensorboard")
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert _train(tmp_path, QUICK).exit_code == 0  # the corrected rerun is not refused


@pytest.mark.slow
def test_two_overwrites_at_once_one_is_refused(tmp_path):
    """Two real `flemme train --overwrite` processes into one folder: exactly one runs."""
    cfg = write_config(tmp_path / "cfg.yaml", config(TINY_2D, train={"steps": 30, "val_every": 0}))
    cmd = [sys.executable, "-m", "flemme_core", "train", str(cfg), "-q", "-o", str(tmp_path / "run"), "--overwrite"]
    procs = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    time.sleep(0.05)
    procs.append(subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(o for p, o in zip(procs, outs) if p.returncode == 2)
    assert "in use by process" in refused and "Traceback" not in refused
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # one run's rows, not two interleaved


def test_clean_stale_tmp_only_touches_flemmes_names(tmp_path):
    names = [".config.yaml.a1.tmp", ".state.json.zz.tmp", ".summary.json.q.tmp", ".other.txt.a.tmp"]
    for n in names:
        (tmp_path / n).write_text("x")
    assert sorted(R.clean_stale_tmp(tmp_path)) == sorted(names[:3])
    assert (tmp_path / ".other.txt.a.tmp").exists()


def test_refuse_foreign_names_the_files(tmp_path):
    (tmp_path / "best.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="best.safetensors"):
        R.refuse_foreign(tmp_path)
