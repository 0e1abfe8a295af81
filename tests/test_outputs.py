"""What a researcher reads and shares: files, JSON and logs the tool writes (issue 19)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flemme_core.checkpoint import atomic_write


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_write_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        out = atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_piped_progress_prints_plain_lines_with_step_loss_speed_and_eta(capsys) -> None:
    from flemme_core.training.logs import Progress

    progress = Progress(total=5, initial=0, enabled=True, quiet=False, interval=0.0)
    assert progress.bar is None  # stderr is captured: not a terminal
    for step in range(1, 6):
        progress.update(step, {"loss": 0.5 / step, "lr": 1e-3})
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert len(lines) == 5 and captured.out == ""
    assert lines[2].startswith("step 3/5  loss 0.1667") and "s/step" in lines[2] and "eta " in lines[2]
    assert "\r" not in captured.err
    slow = Progress(total=100, initial=0, enabled=True, quiet=False)  # default: one line per ~10 s
    slow.update(1, {"loss": 1.0})
    assert capsys.readouterr().err == ""


def test_hd95_of_a_class_never_predicted_is_the_image_diagonal_and_is_counted() -> None:
    import math

    import torch

    from flemme_core.training.metrics import SegmentationMetrics

    label = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    label[0, 0, 2:6, 2:6] = 1
    label[0, 0, 10:13, 10:13] = 2
    logits = torch.zeros(1, 3, 16, 16)
    logits[0, 0] = 1.0
    logits[0, 1, 2:6, 2:6] = 5.0  # class 1 exact, class 2 never predicted
    metrics = SegmentationMetrics(3, ["dice", "hd95"], ["bg", "a", "b"])
    metrics.update(logits, label)
    out = metrics.result()
    diagonal = math.sqrt(16**2 + 16**2)
    assert out["hd95/a"] == 0.0 and math.isclose(out["hd95/b"], diagonal, rel_tol=1e-6)
    assert math.isclose(out["hd95"], diagonal / 2, rel_tol=1e-6)  # missing a class makes the mean worse
    assert out["hd95_empty"] == 1.0
    spaced = SegmentationMetrics(3, ["hd95"], ["bg", "a", "b"], spacing=[2.0, 0.5])
    spaced.update(logits, label)
    assert math.isclose(spaced.result()["hd95/b"], math.sqrt(32**2 + 8**2), rel_tol=1e-6)


def _strict_json(text: str):
    import json

    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_a_finished_run_writes_valid_json_stages_on_val_rows_and_prunes_its_resume_state(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner
    from train_helpers import TINY_2D, config, write_config

    from flemme_core.cli import main

    cfg = config(TINY_2D, train={"steps": 4, "val_every": 2},
                 data={"options": {"num_train": 2, "num_held_out": 2, "size": [32, 32], "seed": 1},
                       "patch_size": [32, 32], "batch_size": 2})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert "for the loop (steps + validation + checkpoints)" in result.output and "wall in all" in result.output
    summary = _strict_json((run / "summary.json").read_text())
    assert summary["parameters"] > 0 and summary["wall_seconds"] >= summary["seconds"] > 0
    assert "hd95_empty" in summary["final"] and summary["hd95_units"] == "voxels"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert val and all(r["stage"] == "main" for r in val)  # the single stage's name
    assert not list(run.glob("state-*.safetensors"))  # pruned: last/best hold the weights
    again = CliRunner().invoke(main, ["train", str(path), "-o", str(run), "--resume"])
    assert again.exit_code == 0 and "already finished" in again.output
    kept = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "kept"), "-q",
                                     "--set", "train.keep_state=true"])
    assert kept.exit_code == 0 and list((tmp_path / "kept").glob("state-*.safetensors"))
    per_item = CliRunner().invoke(main, ["eval", str(run / "last.safetensors"), "--per-item", "--json",
                                         str(tmp_path / "m.json")])
    assert per_item.exit_code == 0, per_item.output
    items = _strict_json((tmp_path / "m.json").read_text())["per_item"]
    assert [r["item"] for r in items] == [0, 1]


def test_train_writes_progress_to_stderr_and_only_results_to_stdout(tmp_path: Path) -> None:
    from train_helpers import TINY_2D, config, flemme, write_config

    cfg = config(TINY_2D, train={"steps": 4, "val_every": 2, "progress": True},
                 data={"options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32],
                       "batch_size": 2})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    result = flemme("train", str(path), "-o", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "training " in result.stderr and "train loss" in result.stderr and "held-out" in result.stderr
    assert "\r" not in result.stderr  # piped: plain lines, no bar fragments
    out = result.stdout.splitlines()
    assert out[0].startswith("held-out metrics after 4 steps") and out[-1].startswith("run folder: ")
    assert not any(line.startswith(("step ", "training ", "note:")) for line in out)
