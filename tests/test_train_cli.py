"""Every bad input stops `flemme train` before training: one `Error:` line, non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from train_helpers import TINY_2D, config, one_error_line, write_config

from flemme_core.cli import main

QUICK = config(TINY_2D, train={"steps": 1, "val_every": 0},
               data={"options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32]})


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _pairs(root: Path, n: int = 3, shape=(16, 16, 16), label_shape=None, affine=None, max_label: int = 2):
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        _nifti(images / f"case{i}.nii.gz", rng.normal(size=shape).astype(np.float32))
        lab = rng.integers(0, max_label + 1, size=label_shape or shape).astype(np.int16)
        _nifti(labels / f"case{i}.nii.gz", lab, affine)
    return images, labels


def _folder_config(images: Path, labels: Path, **data) -> dict:
    return config(QUICK, model={"encoder": {"name": "tiny", "channels": [4, 8], "norm": "instance"}},
                  data={"preset": None, "options": None, "images": str(images), "labels": str(labels),
                        "num_classes": 3, "patch_size": [16, 16, 16], "batch_size": 1, **data})


def _strip(cfg: dict) -> dict:
    cfg["data"] = {k: v for k, v in cfg["data"].items() if v is not None}
    return cfg


def _train(tmp_path: Path, cfg: dict, *args: str):
    path = write_config(tmp_path / "cfg.yaml", _strip(cfg))
    return CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "-q", *args])


def test_missing_file_in_datalist(tmp_path):
    images, labels = _pairs(tmp_path / "d")
    datalist = {"training": [{"image": str(images / "case0.nii.gz"), "label": str(labels / "case0.nii.gz")},
                             {"image": str(images / "nope.nii.gz"), "label": str(labels / "case1.nii.gz")}]}
    (tmp_path / "list.json").write_text(json.dumps(datalist))
    cfg = _folder_config(images, labels)
    cfg["data"].update(images=None, labels=None, datalist=str(tmp_path / "list.json"))
    one_error_line(_train(tmp_path, cfg), "nope.nii.gz", "not found")


def test_image_label_shape_mismatch(tmp_path):
    images, labels = _pairs(tmp_path / "d", label_shape=(16, 16, 12))
    one_error_line(_train(tmp_path, _folder_config(images, labels)), "case0", "16x16x16", "16x16x12")


def test_image_label_affine_mismatch(tmp_path):
    shifted = np.eye(4)
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    images, labels = _pairs(tmp_path / "d", affine=shifted)
    one_error_line(_train(tmp_path, _folder_config(images, labels)), "affines differ")


def test_label_values_outside_the_classes(tmp_path):
    images, labels = _pairs(tmp_path / "d", max_label=5)
    one_error_line(_train(tmp_path, _folder_config(images, labels)), "outside the 3 configured classes")


def test_empty_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    one_error_line(_train(tmp_path, _folder_config(tmp_path / "images", tmp_path / "labels")), "no image files")


def test_patch_larger_than_the_image(tmp_path):
    cfg = config(QUICK, data={"patch_size": [64, 64]})
    one_error_line(_train(tmp_path, cfg), "patch_size [64, 64]", "larger than")


@pytest.mark.parametrize(("section", "values", "needles"), [
    ("model", {"loss": [{"name": "dise"}]}, ("unknown loss", "'dice'")),
    ("train", {"metrics": ["dise"]}, ("unknown segmentation metric", "'dice'")),
    ("data", {"transforms": {"flipp": 0.5}}, ("unknown transform", "'flip'")),
    ("train", {"stepz": 3}, ("unknown key in train", "'steps'")),
    ("train", {"optimizer": "adamm"}, ("train.optimizer", "'adam'")),
    ("model", {"encoder": {"name": "tinyy"}}, ("unknown encoder", "'tiny'")),
    ("data", {"preset": "synthetic-2e"}, ("dataset preset", "'synthetic-2d'")),
])
def test_unknown_names_list_close_matches(tmp_path, section, values, needles):
    one_error_line(_train(tmp_path, config(QUICK, **{section: values})), *needles)


def test_model_that_disagrees_with_the_data(tmp_path):
    one_error_line(_train(tmp_path, config(QUICK, model={"out_channels": 5})), "out_channels", "3 classes")


def test_no_data_given(tmp_path):
    result = CliRunner().invoke(main, ["train", "--encoder", "tiny", "-o", str(tmp_path / "r")])
    one_error_line(result, "no data")


def test_output_folder_of_a_different_run_is_refused(tmp_path):
    first = _train(tmp_path, QUICK)
    assert first.exit_code == 0, first.output
    one_error_line(_train(tmp_path, QUICK), "already holds a run", "--resume", "--overwrite")
    changed = config(QUICK, train={"lr": 0.5})
    one_error_line(_train(tmp_path, changed, "--resume"), "different run", "train.lr")
    same = _train(tmp_path, QUICK, "--resume")  # same config + --resume: fine (already finished)
    assert same.exit_code == 0, same.output
    replaced = _train(tmp_path, changed, "--overwrite")
    assert replaced.exit_code == 0, replaced.output


def test_flags_override_the_config(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", QUICK)
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "-q", "--steps", "2",
                                       "--set", "train.lr=0.002", "--set", "encoder.kernel_size=5"])
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 2 and saved["train"]["lr"] == 0.002
    assert saved["model"]["encoder"]["kernel_size"] == 5
    assert saved["model"]["out_channels"] == 3 and saved["model"]["image_size"] == [32, 32]  # from the data
