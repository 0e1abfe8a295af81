"""Tasks are registered objects: the trainer, evaluator and predict use the model's task's
metrics, monitor and prediction, so a task registered by a plugin works like the core's."""

from __future__ import annotations

import types

import pytest
import torch
from train_helpers import TINY_2D, config

import flemme_core
from flemme_core import build_model, hookimpl
from flemme_core.architectures.encoder_decoder import UNet
from flemme_core.build import loss_spec
from flemme_core.errors import ConfigError
from flemme_core.registry import get_registry
from flemme_core.tasks import RECONSTRUCTION, SEGMENTATION, Segmentation, get_task, task_of


class OverlapSegmentation(Segmentation):
    """A plugin's task: segmentation judged and monitored by IoU only, with plain CE."""

    name = "overlap"
    metrics = {"miou": True}  # noqa: RUF012
    monitor = "miou"
    default_loss = ({"name": "ce", "weight": 1.0},)


class OverlapUNet(UNet):
    task = "overlap"


@pytest.fixture
def overlap_plugin():
    plugin = types.SimpleNamespace(
        register_tasks=hookimpl(lambda register: register("overlap", OverlapSegmentation, "IoU only")),
        register_architectures=hookimpl(lambda register: register("overlap_unet", OverlapUNet, "unet, IoU task")),
    )
    flemme_core.register_plugin(plugin, name="overlap-plugin")
    yield plugin
    flemme_core.unregister_plugin(plugin)


def test_register_tasks(overlap_plugin):
    task = get_task("overlap")
    assert isinstance(task, OverlapSegmentation) and task.mode == "max"
    assert get_registry().get("task", "overlap").provider.name == "overlap-plugin"
    model = build_model({"arch": "overlap_unet", "encoder": {"name": "tiny", "channels": [4, 8]}, "image_size": 16})
    assert task_of(model).name == "overlap"
    assert loss_spec(model) == [{"name": "ce", "weight": 1.0}]  # the task's default loss


def test_trainer_uses_the_tasks_metrics_and_monitor(overlap_plugin, tmp_path):
    from flemme_core.training import train
    from flemme_core.training.config import run_config_from_dict

    run = config(TINY_2D, model={"arch": "overlap_unet"},
                 train={"steps": 4, "val_every": 2, "output": str(tmp_path / "r")})
    summary = train(run_config_from_dict(run), quiet=True)
    assert summary["monitor"] == "miou" and summary["task"] == "overlap"
    assert set(summary["final"]) >= {"miou"} and "dice" not in summary["final"] and "hd95" not in summary["final"]


def test_unknown_metric_for_the_task_lists_its_metrics(overlap_plugin, tmp_path):
    from flemme_core.training import train
    from flemme_core.training.config import run_config_from_dict

    run = config(TINY_2D, model={"arch": "overlap_unet"},
                 train={"steps": 2, "metrics": ["dice"], "output": str(tmp_path / "r")})
    with pytest.raises(ConfigError, match="unknown overlap metric in train.metrics: 'dice'.*miou"):
        train(run_config_from_dict(run), quiet=True)


def test_prediction_and_targets_follow_the_task():
    logits = torch.randn(2, 3, 4, 4)
    assert torch.equal(SEGMENTATION.prediction(logits), logits.argmax(1, keepdim=True))
    assert torch.equal(RECONSTRUCTION.prediction(logits), logits)
    assert SEGMENTATION.out_channels(num_classes=4, in_channels=1) == 4
    assert RECONSTRUCTION.out_channels(num_classes=4, in_channels=1) == 1
    assert SEGMENTATION.higher_is_better("hd95") is False and RECONSTRUCTION.monitor == "psnr"


def test_core_architectures_declare_their_task():
    seg = build_model({"arch": "unet", "encoder": {"name": "tiny", "channels": [4, 8]}, "image_size": 16})
    rec = build_model({"arch": "ae", "encoder": {"name": "tiny", "channels": [4, 8]}, "image_size": 16})
    assert task_of(seg) is SEGMENTATION and task_of(rec) is RECONSTRUCTION
    assert loss_spec(seg) == [{"name": "dice_ce", "weight": 1.0}]  # from the task: unet declares no loss


def test_missing_metric_dependency_is_refused_before_training(monkeypatch, tmp_path):
    """The default HD95 needs scipy: without it a run once trained to the end, crashed in the
    final validation and left a folder that "already holds a run". Now: one line, nothing written."""
    import sys

    from flemme_core.training import train
    from flemme_core.training.config import run_config_from_dict

    monkeypatch.setitem(sys.modules, "scipy", None)  # as if not installed
    out = tmp_path / "r"
    run = config(TINY_2D, train={"steps": 2, "output": str(out)})
    with pytest.raises(ConfigError, match=r"metric 'hd95' needs scipy.*train.metrics=\[dice,miou\]"):
        train(run_config_from_dict(run), quiet=True)
    assert not out.exists()
    run = config(TINY_2D, train={"steps": 2, "val_every": 0, "metrics": ["dice", "miou"], "output": str(out)})
    assert "hd95" not in train(run_config_from_dict(run), quiet=True)["final"]


def test_scipy_is_declared_by_the_core():
    from pathlib import Path

    import tomllib

    meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("scipy") for r in meta["dependencies"])
