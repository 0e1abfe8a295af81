"""The demo and example configs are valid and what they say; the real-data presets run
end to end (marked slow: they need nilearn / stardist and a few minutes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from model_configs import requires_encoders

from flemme_core.cli import main
from flemme_core.training.config import load_run_config
from flemme_core.training.demo import DEMO, SYNTHETIC

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"


def test_demo_is_the_example_config():
    assert yaml.safe_load((CONFIGS / "mni152-tissue-3d.yaml").read_text()) == DEMO
    assert yaml.safe_load((CONFIGS / "synthetic-2d.yaml").read_text()) == SYNTHETIC


@pytest.mark.parametrize("name", ["mni152-tissue-3d.yaml", "synthetic-2d.yaml", "synthetic-3d.yaml"])
def test_example_training_configs_parse(name):
    run = load_run_config(CONFIGS / name)
    assert run.train.steps > 0 and run.data["preset"]


@requires_encoders("cnn")  # the demo trains the cnn plugin's family (it names what to install otherwise)
def test_synthetic_demo_runs_and_reports_dice(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--synthetic", "--steps", "4", "--threads", "1", "-q",
                                       "-o", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "held-out Dice" in result.output
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "overlay.png").stat().st_size > 1000


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.skipif(not _has("nilearn"), reason="needs nilearn (pip install 'flemme-core[data]')")
def test_mni152_demo_end_to_end(tmp_path):
    """The real demo, shortened: it must clearly beat chance on the held-out anterior half."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--steps", "120", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["dice"] > 0.5, summary["final"]
    assert set(summary["final"]) >= {"dice/CSF", "dice/GM", "dice/WM", "hd95"}
    evaluated = CliRunner().invoke(main, ["eval", str(out / "last.safetensors"), "--json", str(tmp_path / "e.json")])
    assert evaluated.exit_code == 0, evaluated.output
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["metrics"]["dice"] == pytest.approx(summary["final"]["dice"], abs=1e-6)
    _predict_the_template(out, tmp_path, summary["final"]["dice"])


def _predict_the_template(out: Path, tmp_path: Path, held_out_dice: float) -> None:
    """`flemme predict` on the raw template file: same grid, and the held-out half segmented
    about as well as evaluation says (the template's own normalisation is re-derived)."""
    import nibabel as nib
    import numpy as np
    from nilearn import datasets

    from flemme_core.data.presets import _ap_halves, _mni152

    t1 = datasets.load_mni152_template(resolution=2)
    src = tmp_path / "mni152.nii.gz"
    nib.save(t1, str(src))
    result = CliRunner().invoke(main, ["predict", str(out / "best.safetensors"), str(src), "-o",
                                       str(tmp_path / "seg.nii.gz")])
    assert result.exit_code == 0, result.output
    seg = nib.load(str(tmp_path / "seg.nii.gz"))
    np.testing.assert_allclose(seg.affine, t1.affine)
    pred = np.asarray(seg.dataobj)
    image, label, mask, affine = _mni152(2, "test")
    _, anterior, _, _ = _ap_halves(image, label, mask, affine)
    p, t = pred[anterior], label[anterior]
    dice = np.mean([2 * ((p == k) & (t == k)).sum() / ((p == k).sum() + (t == k).sum()) for k in (1, 2, 3)])
    assert dice > held_out_dice - 0.1, (dice, held_out_dice)


@pytest.mark.slow
@pytest.mark.parametrize("preset,patch,batch,modules", [
    ("mni152-tissue-2d", [96, 48], 8, ["nilearn"]),
    ("stardist-nuclei-2d", [128, 128], 4, ["stardist"]),
    ("stardist-nuclei-3d", [16, 32, 32], 2, ["stardist"]),
])
def test_real_presets_train_end_to_end(tmp_path, preset, patch, batch, modules):
    if not all(_has(m) for m in modules):
        pytest.skip(f"needs {', '.join(modules)}")
    result = CliRunner().invoke(main, [
        "train", "--data", preset, "--encoder", "tiny", "--arch", "unet", "--steps", "60", "-q",
        "--batch-size", str(batch), "--lr", "0.003",
        "-o", str(tmp_path / "run"), "--set", "encoder.channels=[8,16,32]", "--set", "encoder.norm=instance",
        "--set", f"data.patch_size={patch}", "--set", "train.val_every=0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["dice"] > 0.3, summary["final"]
    assert (tmp_path / "run" / "overlay.png").exists()
