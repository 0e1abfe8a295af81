"""Issue 20, bad data reported early and by name: non-finite voxels, splits that disagree, 4D images,
datalist paths outside the dataset folder, non-regular files, figures that cannot be drawn."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from data_helpers import AFFINE, write_datalist, write_nifti_pairs, write_png_pairs
from PIL import Image
from train_helpers import TINY_2D, config, write_config

from flemme_core.cli import main
from flemme_core.data import check_data
from flemme_core.data.checks import check_arrays
from flemme_core.data.errors import DataError


def _datalist(root, stems, n_val=1):
    return {"datalist": str(write_datalist(root, stems, n_val)), "num_classes": 3, "patch_size": [16, 16, 16],
            "batch_size": 1}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_named_in_the_data_check(tmp_path, bad):
    stems = write_nifti_pairs(tmp_path)
    path = tmp_path / "images" / "case2.nii.gz"
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    data[3, 4, 5] = bad
    nib.save(nib.Nifti1Image(data, image.affine), str(path))
    with pytest.raises(DataError, match=r"image case2\.nii\.gz has 1 non-finite voxel"):
        check_data(_datalist(tmp_path, stems))


def test_non_finite_voxels_in_a_presets_arrays_are_named():
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2, 2] = np.nan
    with pytest.raises(DataError, match="preset x train item 0 has 1 non-finite"):
        check_arrays([{"image": image, "label": np.zeros((1, 8, 8))}], dims=2, num_classes=2, where="preset x train")


def test_predict_refuses_a_nan_image(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", config(TINY_2D, model={"arch": "unet", "encoder": {"name": "tiny",
                                                                                              "channels": [4, 8]}},
                                                   train={"steps": 1, "val_every": 0},
                                                   data={"options": {"num_train": 2, "num_held_out": 1,
                                                                     "size": [32, 32]}, "patch_size": [32, 32],
                                                         "batch_size": 2}))
    assert CliRunner().invoke(main, ["train", str(cfg), "-o", str(tmp_path / "run"), "-q"]).exit_code == 0
    image = np.ones((32, 32), np.float32)
    image[5:9, 5:9] = np.nan
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "run" / "last.safetensors"),
                                       str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "out.nii.gz")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ") and "16 non-finite voxel(s) (16 NaN" in (
        result.stderr)
    assert not (tmp_path / "out.nii.gz").exists()


def test_an_rgb_image_in_the_held_out_split_is_caught_before_training(tmp_path):
    write_png_pairs(tmp_path, n=4)
    rgb = tmp_path / "images" / "c0.png"
    Image.open(rgb).convert("RGB").save(rgb)
    entries = [{"image": f"images/c{i}.png", "label": f"labels/c{i}.png"} for i in range(4)]
    (tmp_path / "d.json").write_text(json.dumps({"training": entries[1:], "validation": entries[:1]}))
    with pytest.raises(DataError, match=r"held-out image c0\.png has 3 channel\(s\) but the training images have 1"):
        check_data({"datalist": str(tmp_path / "d.json"), "num_classes": 3, "patch_size": [32, 32]})


def test_all_4d_images_are_noted_as_channels(tmp_path):
    stems = write_nifti_pairs(tmp_path, n=3)
    assert check_data(_datalist(tmp_path, stems)).notes == []  # 3D images: nothing to say
    for stem in stems:
        path = tmp_path / "images" / f"{stem}.nii.gz"
        data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(np.stack([data, -data], axis=-1), AFFINE), str(path))
    info = check_data(_datalist(tmp_path, stems))
    assert info.in_channels == 2
    assert any("all 3 images are 4D" in n and "2 channels" in n for n in info.notes), info.notes


def test_datalist_paths_outside_the_dataset_folder_are_resolved_and_shown(tmp_path):
    stems = write_nifti_pairs(tmp_path / "elsewhere", n=3)
    (tmp_path / "ds").mkdir()
    entries = [{"image": f"../elsewhere/images/{s}.nii.gz", "label": f"../elsewhere/labels/{s}.nii.gz"}
               for s in stems]
    (tmp_path / "ds" / "d.json").write_text(json.dumps({"training": entries[1:], "validation": entries[:1]}))
    info = check_data({"datalist": str(tmp_path / "ds" / "d.json"), "num_classes": 3, "patch_size": [16, 16, 16]})
    (note,) = [n for n in info.notes if "outside the dataset folder" in n]
    assert str((tmp_path / "elsewhere" / "images" / "case0.nii.gz").resolve()) in note and ".." not in note


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_non_regular_files_in_a_datalist_are_refused(tmp_path, kind):
    stems = write_nifti_pairs(tmp_path, n=3)
    target = "/dev/zero" if kind == "device" else str(tmp_path / "pipe")
    if kind == "fifo":
        os.mkfifo(target)
    entries = [{"image": f"images/{s}.nii.gz", "label": f"labels/{s}.nii.gz"} for s in stems]
    entries[1]["image"] = target
    (tmp_path / "d.json").write_text(json.dumps({"training": entries[1:], "validation": entries[:1]}))
    with pytest.raises(DataError, match="not a regular file"):
        check_data({"datalist": str(tmp_path / "d.json"), "num_classes": 3, "patch_size": [16, 16, 16],
                    "check": False})


def test_a_figure_that_cannot_be_drawn_never_fails_the_run(capsys):
    from flemme_core.training.outputs import draw_figure

    def broken():
        raise ValueError("zero-size array to reduction operation")

    draw_figure("overlay.png", broken)  # no exception
    err = capsys.readouterr().err
    assert "note: overlay.png not drawn (ValueError: zero-size array" in err and "unaffected" in err


@pytest.mark.slow
def test_a_1x1x1_image_with_pad_finishes_its_run_and_skips_the_overlay(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(np.array([[[float(i)]]], np.float32), np.eye(4)), str(tmp_path / f"images/c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.array([[[i % 2]]], np.uint8), np.eye(4)), str(tmp_path / f"labels/c{i}.nii.gz"))
    entries = [{"image": f"images/c{i}.nii.gz", "label": f"labels/c{i}.nii.gz"} for i in range(3)]
    (tmp_path / "d.json").write_text(json.dumps({"training": entries[1:], "validation": entries[:1]}))
    cfg = write_config(tmp_path / "c.yaml", {
        "model": {"arch": "unet", "encoder": {"name": "tiny", "channels": [4, 8]}},
        "data": {"datalist": str(tmp_path / "d.json"), "num_classes": 2, "patch_size": [4, 4, 4], "batch_size": 1,
                 "transforms": {"pad": True}},
        "train": {"steps": 2, "val_every": 0, "progress": False}})
    result = CliRunner().invoke(main, ["train", str(cfg), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "last.safetensors").exists() and "overlay.png not drawn" in result.stderr
