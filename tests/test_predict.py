"""`flemme predict` keeps a NIfTI input's grid (affine, shape) and turns PNG into PNG."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from train_helpers import TINY_2D, TINY_3D, config

from flemme_core.cli import main
from flemme_core.training.config import run_config_from_dict


def _checkpoint(base: dict, out) -> str:
    from flemme_core.training import train

    train(run_config_from_dict(config(base, train={"steps": 2, "val_every": 0, "output": str(out)})), quiet=True)
    return str(out / "last.safetensors")


@pytest.fixture(scope="module")
def ckpt_3d(tmp_path_factory):
    return _checkpoint(TINY_3D, tmp_path_factory.mktemp("p3") / "run")


@pytest.fixture(scope="module")
def ckpt_2d(tmp_path_factory):
    return _checkpoint(TINY_2D, tmp_path_factory.mktemp("p2") / "run")


def test_predict_keeps_the_nifti_affine_and_shape(tmp_path, ckpt_3d):
    affine = np.array([[0.0, -1.5, 0.0, 30.0], [2.0, 0.0, 0.0, -12.0], [0.0, 0.0, 1.2, 4.5], [0, 0, 0, 1]])
    volume = np.random.default_rng(0).normal(size=(30, 20, 27)).astype(np.float32)  # not a multiple of the patch
    src = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), str(src))
    dst = tmp_path / "seg.nii.gz"
    result = CliRunner().invoke(main, ["predict", ckpt_3d, str(src), "-o", str(dst)])
    assert result.exit_code == 0, result.output
    out = nib.load(str(dst))
    assert out.shape == volume.shape
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    np.testing.assert_allclose(out.header.get_zooms(), nib.load(str(src)).header.get_zooms(), atol=1e-5)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}


def test_predict_png_in_png_out_and_several_inputs_to_a_folder(tmp_path, ckpt_2d):
    rng = np.random.default_rng(1)
    paths = []
    for i, shape in enumerate([(40, 56), (64, 48)]):  # rows x columns, neither the patch size
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, size=shape).astype(np.uint8)).save(p)
        paths.append(str(p))
    result = CliRunner().invoke(main, ["predict", ckpt_2d, *paths, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for i, shape in enumerate([(40, 56), (64, 48)]):
        pred = np.array(Image.open(tmp_path / "out" / f"img{i}_pred.png"))
        assert pred.shape == shape
        assert set(np.unique(pred)) <= {0, 1, 2}


def test_predict_bad_inputs_are_one_line_errors(tmp_path, ckpt_3d):
    runner = CliRunner()
    missing = runner.invoke(main, ["predict", ckpt_3d, str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "o.nii.gz")])
    assert missing.exit_code != 0 and missing.output.startswith("Error: ") and "not found" in missing.output
    flat = tmp_path / "flat.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(flat)
    wrong = runner.invoke(main, ["predict", ckpt_3d, str(flat), "-o", str(tmp_path / "o.png")])
    assert wrong.exit_code != 0 and "2D image but the model is 3D" in wrong.output
