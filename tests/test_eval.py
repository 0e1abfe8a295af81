"""`flemme eval` reproduces the trainer's held-out numbers and checks them against
independent references (numpy Dice/IoU, a closed-form PSNR)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from train_helpers import TINY_2D, config

from flemme_core.cli import main
from flemme_core.training.config import run_config_from_dict
from flemme_core.training.metrics import ReconstructionMetrics, SegmentationMetrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from flemme_core.training import train

    out = tmp_path_factory.mktemp("ev") / "run"
    summary = train(run_config_from_dict(config(TINY_2D, train={"steps": 20, "val_every": 0, "output": str(out)})),
                    quiet=True)
    return summary, out


def test_eval_matches_the_final_validation_and_writes_json(tmp_path, trained):
    summary, out = trained
    json_path = tmp_path / "metrics.json"
    result = CliRunner().invoke(main, ["eval", str(out / "last.safetensors"), "--json", str(json_path), "--per-item"])
    assert result.exit_code == 0, result.output
    doc = json.loads(json_path.read_text())  # strict JSON (NaN written as null)
    assert doc["task"] == "segmentation" and doc["num_items"] == 2 and len(doc["per_item"]) == 2
    for key in ("dice", "miou", "hd95", "dice/disk-1", "dice/square-2"):
        assert doc["metrics"][key] == pytest.approx(summary["final"][key], abs=1e-6), key
    assert "dice/disk-1" in result.output


def _numpy_dice_iou(pred: np.ndarray, target: np.ndarray, k: int) -> tuple[float, float]:
    p, t = pred == k, target == k
    inter = np.logical_and(p, t).sum()
    return 2 * inter / (p.sum() + t.sum()), inter / np.logical_or(p, t).sum()


def test_segmentation_metrics_match_numpy():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, size=(2, 1, 20, 24))
    logits = torch.from_numpy(rng.normal(size=(2, 3, 20, 24))).float()
    logits[:, :, :10] += 4 * torch.nn.functional.one_hot(torch.from_numpy(target[:, 0, :10]), 3).permute(0, 3, 1, 2)
    metrics = SegmentationMetrics(3, ["dice", "miou"], ["bg", "a", "b"])
    metrics.update(logits, torch.from_numpy(target))
    pred = logits.argmax(1, keepdim=True).numpy()
    out = metrics.result()
    for k, name in ((1, "a"), (2, "b")):
        ref = [_numpy_dice_iou(pred[i], target[i], k) for i in range(2)]
        assert out[f"dice/{name}"] == pytest.approx(np.mean([r[0] for r in ref]), abs=1e-6)
        assert out[f"iou/{name}"] == pytest.approx(np.mean([r[1] for r in ref]), abs=1e-6)
    assert out["dice"] == pytest.approx((out["dice/a"] + out["dice/b"]) / 2)


def test_psnr_matches_the_closed_form():
    target = torch.rand(1, 1, 16, 16) * 2.0
    pred = target + 0.1
    metrics = ReconstructionMetrics(2, ["psnr", "mse", "ssim"])
    metrics.update(pred, target)
    rng = float(target.max() - target.min())
    out = metrics.result()
    assert out["mse"] == pytest.approx(0.01, rel=1e-4)
    assert out["psnr"] == pytest.approx(10 * math.log10(rng**2 / 0.01), rel=1e-4)
    assert 0.9 < out["ssim"] <= 1.0
