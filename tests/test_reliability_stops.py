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


# -- several processes ------------------------------------------------------------------------------
DDP = config(LONG, train={"steps": 400, "val_every": 0, "save_every": 5, "threads": 1}, data={"batch_size": 2})


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _worker_pid(rank: int, marker: str) -> int:
    for pid in _processes_mentioning(marker):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank}")


def _start_ddp(tmp_path: Path) -> subprocess.Popen:
    proc = _start(tmp_path, DDP, "--nproc", "2")
    _wait_for(tmp_path / "run" / "state.json", proc, timeout=400)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_to_the_nproc_parent_stops_every_worker_and_says_so_once(tmp_path, signum, code):
    proc = _start_ddp(tmp_path)
    marker = str(tmp_path / "run")
    assert len(_processes_mentioning(marker)) >= 3  # torchrun and two workers besides the parent
    proc.send_signal(signum)  # what a terminal's Ctrl-C or `kill` reaches: the flemme process only
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.count("interrupted") == 1 and "--resume" in err
    time.sleep(1)
    assert _processes_mentioning(marker) == []  # no worker outlives the command


@pytest.mark.slow
def test_a_killed_worker_is_one_error_line_naming_its_rank(tmp_path):
    proc = _start_ddp(tmp_path)
    os.kill(_worker_pid(1, str(tmp_path / "run")), signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("Error: worker rank 1 was killed by SIGKILL") and "--resume" in lines[-1], err
    assert sum(x.startswith("Error") for x in lines) == 1
    time.sleep(1)
    assert _processes_mentioning(str(tmp_path / "run")) == []


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_nproc_parent(tmp_path):
    proc = _start_ddp(tmp_path)
    proc.kill()  # SIGKILL: no handler runs in the flemme process; torchrun gets SIGTERM from the kernel
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while _processes_mentioning(str(tmp_path / "run")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(str(tmp_path / "run")) == []
