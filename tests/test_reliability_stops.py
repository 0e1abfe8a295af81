"""Issue 20, stops: SIGTERM is a stop like Ctrl-C (resume hint, exit 143, after the current checkpoint
commit); under --nproc the launcher forwards stops to every worker, reports a dead worker in one line
and leaves no process behind. The DDP cases are slow (marked)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_helpers import TINY_2D, config, env, write_config

from flemme_core.training import stops

LONG = config(TINY_2D, model={"arch": "unet", "encoder": {"name": "tiny", "channels": [4, 8]}},
              train={"steps": 150, "val_every": 0, "save_every": 5},
              data={"options": {"num_train": 4, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32],
                    "batch_size": 2})


def _start(tmp_path: Path, cfg: dict, *extra: str) -> subprocess.Popen:
    path = write_config(tmp_path / "cfg.yaml", cfg)
    return subprocess.Popen([sys.executable, "-m", "flemme_core", "train", str(path), "-o", str(tmp_path / "run"),
                             "-q", *extra], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_a_stop_inside_a_commit_is_delivered_after_it():
    done = []
    with pytest.raises(stops.Stopped) as caught, stops.stop_signals():
        with stops.deferred_stops():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            done.append("the commit finished")
        done.append("not reached")
    assert done == ["the commit finished"] and caught.value.signum == signal.SIGTERM
    assert stops.exit_code(caught.value) == 143 and stops.exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_resume_command_keeps_the_arguments_and_swaps_overwrite():
    assert stops.resume_command(["train", "c.yaml", "-o", "my run", "--overwrite", "--nproc", "2"]) == (
        "flemme train c.yaml -o 'my run' --nproc 2 --resume")


def _sigterm_train(tmp_path: Path) -> dict:
    proc = _start(tmp_path, LONG)
    _wait_for(tmp_path / "run" / "state.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("interrupted (SIGTERM); continue with: flemme train") and "--resume" in lines[-1]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert 0 < state["step"] < 150 and (tmp_path / "run" / state["tensors"]).is_file()
    load_file(str(tmp_path / "run" / "last.safetensors"))  # complete, readable
    assert not (tmp_path / "run" / ".flemme.lock").exists()  # the lock was released
    return state


def test_sigterm_stops_train_like_ctrl_c(tmp_path):
    _sigterm_train(tmp_path)


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_resumes_to_the_end(tmp_path):
    _sigterm_train(tmp_path)
    resumed = subprocess.run([sys.executable, "-m", "flemme_core", "train", str(tmp_path / "cfg.yaml"), "-o",
                              str(tmp_path / "run"), "-q", "--resume"], env=env(), capture_output=True, text=True, check=False,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "run" / "state.json").read_text())["step"] == 150
