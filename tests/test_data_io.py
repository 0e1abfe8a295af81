"""read_image / write_prediction: predictions overlay their input (NIfTI affine, PNG orientation)."""

from __future__ import annotations

import numpy as np
import pytest

from flemme_core.data import output_path_for, read_image, write_prediction
from flemme_core.data.errors import DataError
from flemme_core.errors import ShapeError

AFFINE = np.array([[0, -1.2, 0, 30.0], [0.9, 0, 0, -12.0], [0, 0, 2.5, 4.0], [0, 0, 0, 1]])  # oblique-ish


def test_nifti_roundtrip_keeps_affine_and_values(tmp_path):
    import nibabel as nib

    data = np.random.default_rng(0).random((12, 10, 6)).astype(np.float32)
    src = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(src))
    img = read_image(src)
    assert img.format == "nifti" and img.array.shape == (1, 12, 10, 6) and img.array.dtype == np.float32
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    assert img.spacing == pytest.approx((0.9, 1.2, 2.5))
    pred = (img.array > 0.5).astype(np.int64)
    out = write_prediction(pred, output_path_for(src, tmp_path / "out"), like=img)
    assert out == tmp_path / "out" / "case_pred.nii.gz"
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, AFFINE, atol=1e-5)
    assert np.issubdtype(back.get_data_dtype(), np.integer)
    np.testing.assert_array_equal(np.asarray(back.dataobj), pred[0])


def test_nifti_probabilities_are_written_channels_last(tmp_path):
    import nibabel as nib
    import torch

    src = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 4), np.float32), np.eye(4)), str(src))
    img = read_image(src)
    probs = torch.rand(3, 8, 9, 4)
    back = nib.load(str(write_prediction(probs, tmp_path / "p.nii.gz", like=img)))
    assert back.shape == (8, 9, 4, 3)
    np.testing.assert_allclose(np.asarray(back.dataobj)[..., 1], probs[1].numpy(), atol=1e-6)


def test_png_prediction_has_the_input_orientation(tmp_path):
    from PIL import Image

    rows, cols = 30, 50
    mask = np.zeros((rows, cols), np.uint8)
    mask[5:12, 20:45] = 1
    src = tmp_path / "cell.jpg"
    Image.fromarray((mask * 200 + 20).astype(np.uint8)).convert("RGB").save(src, quality=100)
    img = read_image(src)
    assert img.format == "pil" and img.array.shape == (3, cols, rows)  # MONAI: (C, width, height)
    pred = (img.array[:1] > 110).astype(np.int64)
    out = write_prediction(pred, output_path_for(src, tmp_path), like=img)
    assert out.name == "cell_pred.png"
    np.testing.assert_array_equal(np.asarray(Image.open(out)), mask)  # same rows x columns as the input
    soft = write_prediction(img.array[:1] / 255.0, tmp_path / "soft.png", like=img)
    assert np.asarray(Image.open(soft)).shape == (rows, cols)


def test_bad_prediction_and_input(tmp_path):
    import nibabel as nib

    src = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(src))
    img = read_image(src)
    with pytest.raises(ShapeError, match=r"prediction of shape \(1, 8, 8, 4\) does not match the input a.nii.gz"):
        write_prediction(np.zeros((1, 8, 8, 4)), tmp_path / "p.nii.gz", like=img)
    with pytest.raises(DataError, match=r"image .*missing.nii.gz not found"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"cannot read image .*junk.nii.gz"):
        read_image(tmp_path / "junk.nii.gz")
    with pytest.raises(DataError, match=r"use a .nii.gz or .png output name"):
        write_prediction(np.zeros((8, 8, 8)), tmp_path / "p.mat", like=img)
