"""The trainer uses only the Architecture contract: stages (optimiser rebuilt over the
trainable parameters, per-stage steps and lr), the architecture's own validation metrics,
and a non-finite loss stops the run with the step named and the last checkpoint kept."""

from __future__ import annotations

import json
import types
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from train_helpers import TINY_2D, config, write_config

import flemme_core
from flemme_core.architectures.encoder_decoder import UNet
from flemme_core.cli import main
from flemme_core.hookspecs import hookimpl

SMALL = config(TINY_2D, train={"steps": 6, "val_every": 0, "lr": 0.01},
               data={"options": {"num_train": 4, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32]})


class TwoStage(UNet):
    """Stage 'warm' trains everything; stage 'head' freezes the encoder and decoder."""

    calls: ClassVar[list[str]] = []

    def training_stages(self):
        return ["warm", "head"]

    def begin_stage(self, name):
        super().begin_stage(name)
        TwoStage.calls.append(name)
        for p in self.parameters():
            p.requires_grad = name == "warm"
        for p in self.head.parameters():
            p.requires_grad = True


class OwnMetrics(UNet):
    """A 'generative' stand-in: validation metrics of its own."""

    def validation_metrics(self, batch):
        x, _ = self.inputs_and_target(batch)
        return {"energy": float(self(x).pow(2).mean()), "items": float(x.shape[0])}


class BestEarly(TwoStage):
    """Scores best in its first stage, whose model is not the final one (a distillation teacher)."""

    def validation_metrics(self, batch):
        return {"score": 1.0 if self.stage == "warm" else 0.5}


class NaNAfter(UNet):
    """Its loss becomes NaN at the fourth training step."""

    def training_loss(self, batch, criterion):
        self.count = getattr(self, "count", 0) + 1
        loss, logs = super().training_loss(batch, criterion)
        return (loss * float("nan") if self.count >= 4 else loss), logs


plugin = types.SimpleNamespace()


@hookimpl
def register_architectures(register):
    register("test_two_stage", TwoStage, "test", task="segmentation")
    register("test_own_metrics", OwnMetrics, "test", task="segmentation")
    register("test_nan_after", NaNAfter, "test", task="segmentation")
    register("test_best_early", BestEarly, "test", task="segmentation")


plugin.register_architectures = register_architectures


@pytest.fixture(autouse=True)
def _plugin():
    flemme_core.register_plugin(plugin, "flemme-train-contract-tests")
    yield
    flemme_core.unregister_plugin(plugin)


def _run(tmp_path, data, *args):
    cfg = write_config(tmp_path / "cfg.yaml", data)
    return CliRunner().invoke(main, ["train", str(cfg), "-o", str(tmp_path / "run"), "-q", *args])


def test_stages_rebuild_the_optimiser_over_trainable_parameters(tmp_path):
    TwoStage.calls = []
    data = config(SMALL, model={"arch": "test_two_stage"},
                  train={"schedule": "cosine", "stages": {"warm": {"steps": 3, "lr": 0.01}, "head": {"steps": 2, "lr": 0.05}},
                         "save_every": 3})
    result = _run(tmp_path, data)
    assert result.exit_code == 0, result.output
    assert TwoStage.calls == ["warm", "head"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [(r["step"], r["stage"]) for r in train_rows] == [(3, "warm"), (5, "head")]
    assert train_rows[-1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 2)).item()))
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 5 and state["finished"]


def test_frozen_parameters_do_not_move_in_a_later_stage(tmp_path):
    data = config(SMALL, model={"arch": "test_two_stage"},
                  train={"stages": {"warm": {"steps": 2}, "head": {"steps": 3}}, "save_every": 2})
    assert _run(tmp_path, data).exit_code == 0
    # weights after stage 'warm' (state committed at its last step) vs the end
    full = load_file(str(tmp_path / "run" / "last.safetensors"))
    data2 = config(data, train={"stages": {"warm": {"steps": 2}, "head": {"steps": 1}}})
    (tmp_path / "short").mkdir()
    result = _run(tmp_path / "short", data2)
    assert result.exit_code == 0, result.output
    short = load_file(str(tmp_path / "short" / "run" / "last.safetensors"))
    enc = [k for k in full if k.startswith("encoder.")]
    head = [k for k in full if k.startswith("head.")]
    assert enc and all(torch.equal(full[k], short[k]) for k in enc)
    assert any(not torch.equal(full[k], short[k]) for k in head)


def test_unknown_stage_name_is_an_error(tmp_path):
    data = config(SMALL, model={"arch": "test_two_stage"}, train={"stages": {"wram": {"steps": 2}}})
    result = _run(tmp_path, data)
    assert result.exit_code != 0
    assert "unknown stage" in result.output and "'warm'" in result.output


def test_own_validation_metrics_replace_the_task_metrics(tmp_path):
    data = config(SMALL, model={"arch": "test_own_metrics"}, train={"monitor": "energy", "monitor_mode": "min"})
    result = _run(tmp_path, data)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["final"]) == {"energy", "items"}
    assert summary["best"]["metric"] == "energy" and summary["best"]["score"] == summary["final"]["energy"]


def test_only_the_final_stage_makes_the_best_checkpoint(tmp_path):
    data = config(SMALL, model={"arch": "test_best_early"},
                  train={"stages": {"warm": {"steps": 2}, "head": {"steps": 2}}, "val_every": 1,
                         "monitor": "score", "monitor_mode": "max"})
    result = _run(tmp_path, data)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows if r["split"] == "val"] == [1.0, 1.0, 0.5, 0.5]  # every stage is validated
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"] == {"score": 0.5, "step": 3, "metric": "score"}
    assert (tmp_path / "run" / "best.safetensors").exists()


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data = config(SMALL, model={"arch": "test_nan_after"}, train={"save_every": 2, "steps": 10})
    result = _run(tmp_path, data)
    assert result.exit_code != 0
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "non-finite" in lines[0] and "step 4" in lines[0] and "last.safetensors" in lines[0]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 2
    weights = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


class CrashAt(TwoStage):
    """Raises at the ``crash_at``-th training step (a crash the run resumes from)."""

    crash_at: int | None = None
    count = 0

    def training_loss(self, batch, criterion):
        CrashAt.count += 1
        if CrashAt.count == CrashAt.crash_at:
            raise RuntimeError("simulated crash")
        return super().training_loss(batch, criterion)


@hookimpl
def _register_crash(register):
    register("test_crash_at", CrashAt, "test", task="segmentation")


crash_plugin = types.SimpleNamespace(register_architectures=_register_crash)


@pytest.mark.parametrize("crash_at", [4, 5])  # resume at the 'head' stage's start (3) or inside it (4)
def test_resume_across_stages_matches_an_uninterrupted_run(tmp_path, crash_at):
    from flemme_core.training import train
    from flemme_core.training.config import run_config_from_dict

    flemme_core.register_plugin(crash_plugin, "flemme-train-crash-tests")
    try:
        data = config(SMALL, model={"arch": "test_crash_at", "encoder": {"name": "tiny", "channels": [4, 8],
                                                                          "norm": "instance", "dropout": 0.2}},
                      train={"stages": {"warm": {"steps": 3}, "head": {"steps": 3, "lr": 0.02}}, "save_every": 2})
        CrashAt.crash_at, CrashAt.count = None, 0
        train(run_config_from_dict(config(data, train={"output": str(tmp_path / "ref")})), quiet=True)
        run = run_config_from_dict(config(data, train={"output": str(tmp_path / "crashed")}))
        CrashAt.crash_at, CrashAt.count = crash_at, 0
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(run, quiet=True)
        state = json.loads((tmp_path / "crashed" / "state.json").read_text())
        assert state["step"] == crash_at - 1
        CrashAt.crash_at = None
        train(run, resume=True, quiet=True)
    finally:
        flemme_core.unregister_plugin(crash_plugin)
    a = load_file(str(tmp_path / "ref" / "last.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
