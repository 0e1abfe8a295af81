"""The distill architecture: stages, freezing, distillation losses; fusions under every architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from flemme_mmfd.distill import logit_distillation
from mmfd_testutil import probe

from flemme_core import build_model, load_model, save_model
from flemme_core.build import loss_spec
from flemme_core.errors import CheckpointError, ConfigError
from flemme_core.losses import build_loss
from flemme_core.registry import get_registry

CNN = {"name": "cnn", "channels": [8, 16], "norm": "group", "patch_size": 1, "block": "double_conv"}
TEACHER = {"name": "mmfd", "branches": [{**CNN, "freeze": True, "lora": {"targets": ["conv"], "rank": 2}},
                                        {"name": "cnn", "channels": [8, 16, 24], "norm": "group", "patch_size": 1, "block": "double_conv"}],
           "fusion": "gated"}


def distill(**options):
    return build_model({"arch": "distill", "image_size": [32, 32], "encoder": {"name": "cnn", "channels": [4, 8],
                                                                               "norm": "group"},
                        "arch_options": {"teacher": TEACHER, **options}})


def batch(n=2):
    torch.manual_seed(1)
    return {"image": torch.randn(n, 1, 32, 32), "label": torch.randint(0, 2, (n, 1, 32, 32))}


def criterion(model):
    return build_loss(loss_spec(model), model.config.out_channels, model.config.dims)


def grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


def test_stage_one_trains_teacher_except_frozen_branches():
    model = distill()
    assert model.training_stages() == ["teacher", "student"]
    model.begin_stage("teacher")
    model.train()
    loss, _ = model.training_loss(batch(), criterion(model))
    loss.backward()
    frozen = model.teacher.encoder.branches[0]
    for n, p in frozen.named_parameters():
        assert (p.grad is not None) == (".lora_" in n), n
    assert all(g is not None for n, g in grads(model.teacher).items() if "branches.0." not in n)
    assert all(g is None for g in grads(model.student).values())
    assert all(g is None for g in grads(model.projectors).values())


def test_teacher_gets_no_gradient_in_stage_two():
    model = distill(logit_weight=1.0)
    model.begin_stage("student")
    model.train()
    assert not model.teacher.training and model.student.training
    loss, logs = model.training_loss(batch(), criterion(model))
    loss.backward()
    assert set(logs) >= {"task", "feature", "logit"} and logs["feature"] > 0
    assert all(g is None for g in grads(model.teacher).values())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(g is not None for g in grads(model.student).values())
    assert any(g is not None for g in grads(model.projectors).values())
    # a later stage-1 restart restores exactly what the teacher may train
    model.begin_stage("teacher")
    assert {n for n, p in model.teacher.named_parameters() if p.requires_grad} == \
        {n for n, t in model._trainable["teacher"].items() if t}


def test_distillation_loss_is_zero_when_student_equals_teacher():
    model = build_model({"arch": "distill", "image_size": [32, 32], "encoder": CNN,
                         "arch_options": {"teacher": CNN, "logit_weight": 1.0, "task_weight": 0.0}})
    model.student.load_state_dict(model.teacher.state_dict())
    assert all(isinstance(p, torch.nn.Identity) for p in model.projectors)
    model.begin_stage("student")
    model.train()
    loss, logs = model.training_loss(batch(), criterion(model))
    assert logs["feature"] == 0.0 and abs(logs["logit"]) < 1e-6 and abs(float(loss.detach())) < 1e-6


def test_feature_loss_matches_a_manual_reference():
    model = distill(feature_levels="last")
    model.begin_stage("student")
    model.eval()
    b = batch()
    _, logs = model.training_loss(b, criterion(model))
    with torch.no_grad():
        t = model.teacher.encoder(b["image"])[-1]
        (ti, si), = model.pairs
        s = model.projectors[0](model.student.encoder(b["image"])[si])
        s = F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False) \
            if s.shape[-1] < t.shape[-1] else F.adaptive_avg_pool2d(s, t.shape[2:])
    assert ti == len(model.teacher.encoder.feature_strides) - 1
    assert logs["feature"] == pytest.approx(float(F.mse_loss(s, t)), rel=1e-5)


def test_logit_distillation_against_reference():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    temp = 2.0
    p_t = torch.softmax(t / temp, 1)
    ref = (p_t * (p_t.log() - torch.log_softmax(s / temp, 1))).sum(1).mean() * temp ** 2
    assert float(logit_distillation(s, t, temp, "segmentation")) == pytest.approx(float(ref), rel=1e-5)
    s1, t1 = s[:, :1], t[:, :1]
    p = torch.sigmoid(t1 / temp)
    q = torch.sigmoid(s1 / temp)
    ref1 = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * temp ** 2
    assert float(logit_distillation(s1, t1, temp, "segmentation")) == pytest.approx(float(ref1), rel=1e-4)
    assert float(logit_distillation(t, t, temp, "segmentation")) == pytest.approx(0.0, abs=1e-6)


def test_predict_is_the_student_and_teacher_checkpoint_skips_stage_one(tmp_path):
    model = distill()
    x = torch.randn(1, 1, 32, 32)
    model.eval()
    assert torch.equal(model.predict(x), model.student.predict(x))
    assert model.encoder is model.student.encoder
    assert not any(k.startswith("encoder.") for k in model.state_dict())  # the student encoder is stored once
    teacher_path = save_model(model.teacher, tmp_path / "teacher.safetensors")
    second = build_model({"arch": "distill", "image_size": [32, 32], "encoder": CNN,
                          "arch_options": {"teacher_checkpoint": str(teacher_path)}})
    assert second.training_stages() == ["student"]
    second.eval()
    assert torch.equal(second.teacher.predict(x), model.teacher.predict(x))
    # a distill run's checkpoint (a study's teacher-stage cell) gives its teacher, not the whole run
    run_path = save_model(model, tmp_path / "teacher-stage.safetensors")
    third = build_model({"arch": "distill", "image_size": [32, 32], "encoder": CNN,
                         "arch_options": {"teacher_checkpoint": str(run_path)}})
    third.eval()
    assert type(third.teacher).__name__ == "UNet"
    assert torch.equal(third.teacher.predict(x), model.teacher.predict(x))


def test_validation_measures_the_teacher_while_it_trains():
    """In stage 1 the student is untrained: validation (predict, own metrics) is the teacher's."""
    model = distill()
    x = torch.randn(1, 1, 32, 32)
    model.begin_stage("teacher")
    model.eval()
    assert model.evaluated() is model.teacher and torch.equal(model.predict(x), model.teacher.predict(x))
    model.begin_stage("student")
    model.eval()
    assert model.evaluated() is model.student and torch.equal(model.predict(x), model.student.predict(x))


def test_distill_option_mistakes():
    with pytest.raises(ConfigError, match="exactly one of teacher"):
        build_model({"arch": "distill", "image_size": [32, 32], "encoder": CNN})
    with pytest.raises(ConfigError, match="stages"):
        distill(stages=["student", "teacher"])
    with pytest.raises(ConfigError, match="feature_levels"):
        distill(feature_levels=[7])
    with pytest.raises(ConfigError, match="not 'main'"):
        distill().begin_stage("main")


def _trained_branch(tmp_path, model_or_encoder, name):
    """A unet (or an encoder in a 32×32 unet) saved as a branch checkpoint, weights moved off their init."""
    config = (model_or_encoder if "arch" in model_or_encoder else
              {"arch": "unet", "image_size": [32, 32], "encoder": model_or_encoder})
    model = build_model(config)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, str(save_model(model, tmp_path / f"{name}.safetensors"))


@pytest.mark.parametrize("fusion", ["sum", "share_token"])
def test_teacher_init_with_residual_starts_as_the_branch_model(tmp_path, fusion):
    branch_model, path = _trained_branch(tmp_path, CNN, "main")
    teacher = {"name": "mmfd", "residual": "main", "fusion": fusion,
               "fusion_options": {"num_tokens": 4, "depth": 1} if fusion == "share_token" else {},
               "branches": [{"name": "cnn", "channels": [8, 16, 24], "norm": "group", "patch_size": 1, "block": "double_conv"},
                            {"id": "main", "checkpoint": path, "freeze": True,
                             "lora": {"targets": ["conv"], "rank": 2}}]}
    model = distill(teacher=teacher, teacher_init="main")
    enc = model.teacher.encoder
    assert enc.feature_channels == [8, 16] and enc.feature_strides == [1, 2]  # the residual branch's grid
    x = batch()["image"]
    model.eval(), branch_model.eval()
    assert torch.allclose(model.teacher(x), branch_model(x), atol=1e-6)
    # The fusion is live from the first step: the zero scales get a gradient, and after one
    # update the teacher differs from the branch model.
    model.begin_stage("teacher")
    model.train()
    loss, _ = model.training_loss(batch(), criterion(model))
    loss.backward()
    assert all(float(s.grad.abs().sum()) > 0 for s in enc.residual_scales)
    with torch.no_grad():
        for s in enc.residual_scales:
            s.sub_(s.grad.sign() * 0.1)
    model.eval()
    assert not torch.allclose(model.teacher(x), branch_model(x), atol=1e-4)


def test_teacher_init_and_residual_mistakes(tmp_path):
    _, path = _trained_branch(tmp_path, CNN, "main")
    other = {"name": "cnn", "channels": [8, 16, 24], "norm": "group", "patch_size": 1, "block": "double_conv"}
    main = {"id": "main", "checkpoint": path, "freeze": True}
    with pytest.raises(ConfigError, match="residual branch 'main' must supply every fused level"):
        build_model({"arch": "unet", "image_size": [32, 32],
                     "encoder": {"name": "mmfd", "residual": "main", "channels": [8, 32], "branches": [other, main]}})
    with pytest.raises(ConfigError, match="branch id 'mian'.*main"):
        build_model({"arch": "unet", "image_size": [32, 32],
                     "encoder": {"name": "mmfd", "residual": "mian", "branches": [other, main]}})
    # Without residual the fused widths are the widest branch's, so the branch decoder cannot fit.
    with pytest.raises(CheckpointError, match="weights do not fit.*set residual: main"):
        distill(teacher={"name": "mmfd", "branches": [other, main]}, teacher_init="main")
    with pytest.raises(ConfigError, match="branch 'cnn' has no checkpoint"):
        distill(teacher={"name": "mmfd", "residual": "cnn", "branches": [other, main]}, teacher_init="cnn")
    ae = save_model(build_model({"arch": "ae", "image_size": [32, 32], "out_channels": 1, "encoder": CNN}),
                    tmp_path / "ae.safetensors")
    with pytest.raises(ConfigError, match="trained as 'ae' but the teacher is 'unet'"):
        distill(teacher={"name": "mmfd", "residual": "a", "branches": [other, {"id": "a", "checkpoint": str(ae)}]},
                teacher_init="a")


def _architectures():
    names = ["unet", "ae"]
    if "hunet" in get_registry().components("architecture"):
        names.append("hunet")
    return names


@pytest.mark.parametrize("arch", _architectures())
@pytest.mark.parametrize("fusion", ["sum", "concat", "gated", "share_token", "max"])
def test_every_fusion_with_every_architecture(arch, fusion):
    encoder = {"name": "mmfd", "branches": [{**CNN, "channels": [8, 16, 32]}, probe(8, 24)], "fusion": fusion,
               "channels": [8, 16, 16]}
    if fusion == "share_token":
        encoder["fusion_options"] = {"num_tokens": 4, "depth": 1}
    model = build_model({"arch": arch, "image_size": [16, 16], "out_channels": 1 if arch == "ae" else 2,
                         "encoder": encoder})
    b = {k: v[..., :16, :16] for k, v in batch().items()}
    if arch == "ae":
        b["label"] = b["image"]
    model.train()
    loss, _ = model.training_loss(b, criterion(model))
    loss.backward()
    assert torch.isfinite(loss)
    out = model.predict(b["image"])
    assert out.shape[2:] == (16, 16)


class _Oracle(torch.nn.Module):
    """Predicts a fixed label map (shifted by ``shift`` columns) as logits, whatever the input."""

    def __init__(self, label: torch.Tensor, shift: int = 0):
        super().__init__()
        self.label = torch.roll(label, shift, dims=-1)

    def predict(self, x):
        h, w = x.shape[2:]
        onehot = F.one_hot(self.label[..., :h, :w].expand(x.shape[0], -1, -1, -1)[:, 0], 2)
        return onehot.movedim(-1, 1).float() * 10


def test_report_dice_against_a_reference():
    from flemme_mmfd.report import format_report, held_out_dice, measure

    label = (torch.rand(1, 1, 32, 32) > 0.7).long()
    items = [{"image": torch.zeros(1, 32, 32).numpy(), "label": label[0].numpy()}]
    assert held_out_dice(_Oracle(label), items, [32, 32], 2) == pytest.approx(1.0)
    shifted = torch.roll(label, 3, dims=-1)
    ref = 2 * float((shifted & label).sum()) / float(shifted.sum() + label.sum())
    assert held_out_dice(_Oracle(label, 3), items, [32, 32], 2) == pytest.approx(ref, rel=1e-6)
    model = distill()
    rows = {k: measure(m, items, 2, threads=1, repeats=2) for k, m in
            {"teacher": model.teacher, "student": model.student}.items()}
    assert rows["student"]["parameters"] == sum(p.numel() for p in model.student.parameters())
    assert all(r["cpu_ms"] > 0 and 0 <= r["dice"] <= 1 for r in rows.values())
    assert "student/teacher: parameters 1/" in format_report(rows)


def test_flemme_eval_compares_teacher_and_student(tmp_path):
    """`flemme eval` on a trained distill run: the variants table is the distill report."""
    import json

    from click.testing import CliRunner

    from flemme_core.cli import main
    from flemme_core.training import train
    from flemme_core.training.config import run_config_from_dict

    out = tmp_path / "run"
    model = {"arch": "distill", "encoder": {"name": "cnn", "channels": [4, 8], "norm": "group", "patch_size": 1, "block": "double_conv"},
             "arch_options": {"teacher": {"name": "cnn", "channels": [16, 32], "norm": "group", "patch_size": 1, "block": "double_conv"}}}
    data = {"preset": "synthetic-2d", "options": {"num_train": 2, "num_held_out": 2, "size": [32, 32]},
            "patch_size": [32, 32], "batch_size": 2}
    train(run_config_from_dict({"model": model, "data": data,
                                "train": {"steps": 2, "val_every": 0, "threads": 1, "output": str(out)}}), quiet=True)
    doc_path = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", str(out / "last.safetensors"), "--json", str(doc_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(doc_path.read_text())
    teacher, student = doc["variants"]["teacher"], doc["variants"]["student"]
    loaded = load_model(out / "last.safetensors")
    assert student["parameters"] == sum(p.numel() for p in loaded.student.parameters())
    assert teacher["parameters"] == sum(p.numel() for p in loaded.teacher.parameters())
    assert teacher["parameters"] > 10 * student["parameters"] and teacher["cpu_ms"] > 0 < student["cpu_ms"]
    # the model's own prediction is the student's: same metrics, computed twice
    for key, value in doc["metrics"].items():
        assert student["metrics"][key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    assert "student vs teacher: parameters 1/" in result.output and "x faster on CPU" in result.output
    none = CliRunner().invoke(main, ["eval", str(out / "last.safetensors"), "--no-variants"])
    assert none.exit_code == 0 and "student vs teacher" not in none.output


def test_shipped_demo_config_teacher_starts_as_its_residual_branch(tmp_path):
    """configs/distill-stardist.yaml builds on the branch configs' checkpoints, and its teacher
    is exactly the cnn branch's model before the teacher stage."""
    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    branches = {}
    for name in ("cnn", "swin"):
        model, path = _trained_branch(tmp_path, yaml.safe_load((configs / f"branch-{name}.yaml").read_text())["model"],
                                      name)
        branches[name] = (model, path)
    config = yaml.safe_load((configs / "distill-stardist.yaml").read_text())["model"]
    for spec in config["arch_options"]["teacher"]["branches"]:
        spec["checkpoint"] = branches[spec["id"]][1]
    model = build_model(config)
    residual = config["arch_options"]["teacher"]["residual"]
    reference = branches[residual][0].eval()
    model.eval()
    x = torch.randn(1, 1, *config["image_size"])
    assert torch.allclose(model.teacher(x), reference(x), atol=1e-5)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model.student) * 10 <= count(model.teacher)


def test_distill_report_is_a_flemme_subcommand(tmp_path):
    """`flemme distill-report` comes through the command hook; a wrong checkpoint is one Error line."""
    from click.testing import CliRunner

    from flemme_core.checkpoint import save_model
    from flemme_core.cli import main

    help_line = next(ln for ln in CliRunner().invoke(main, ["--help"]).output.splitlines()
                     if ln.strip().startswith("distill-report"))
    assert "[flemme-mmfd]" in help_line
    path = tmp_path / "unet.safetensors"
    save_model(build_model({"arch": "unet", "encoder": {"name": "cnn", "channels": [4, 8]}, "image_size": 16}), path)
    r = CliRunner().invoke(main, ["distill-report", str(path), "--repeats", "1"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Error: distill-report needs a distill model") and len(r.output.splitlines()) == 1
