"""--data takes a Decathlon or nnU-Net raw folder as it is, and datalist/folder data need no
data.num_classes when the data says it (dataset.json labels, or the label files' values)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from data_helpers import write_datalist, write_nifti_pairs

from flemme_core.cli_train import data_source
from flemme_core.data import build_datasets
from flemme_core.data.errors import DataError

BASE = {"patch_size": [16, 16, 16], "batch_size": 1, "cache": False}


def _decathlon(root: Path, labels: dict | None) -> Path:
    """Task01-style: imagesTr/, labelsTr/ and dataset.json listing the training pairs."""
    stems = write_nifti_pairs(root, n=3)
    (root / "images").rename(root / "imagesTr")
    (root / "labels").rename(root / "labelsTr")
    entries = [{"image": f"./imagesTr/{s}.nii.gz", "label": f"./labelsTr/{s}.nii.gz"} for s in stems]
    doc = {"name": "toy", "training": entries, "numTraining": len(entries)}
    if labels is not None:
        doc["labels"] = labels
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


def test_decathlon_folder_just_works(tmp_path):
    root = _decathlon(tmp_path / "Task09_Toy", {"0": "background", "1": "ring", "2": "core"})
    source = data_source(str(root))
    assert source == {"datalist": str(root / "dataset.json")}
    _, val, info = build_datasets({**source, **BASE})
    assert info.num_classes == 3 and info.class_names == ["background", "ring", "core"] and len(val) == 1


def test_nnunet_raw_folder_just_works(tmp_path):
    """nnU-Net v2: dataset.json without a training list, labels as name -> value, images case_0000."""
    root = tmp_path / "Dataset001_Toy"
    stems = write_nifti_pairs(root, n=3)
    (root / "imagesTr").mkdir()
    for s in stems:
        shutil.move(root / "images" / f"{s}.nii.gz", root / "imagesTr" / f"{s}_0000.nii.gz")
    (root / "labels").rename(root / "labelsTr")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {
        "background": 0, "ring": 1, "core": 2}, "numTraining": 3, "file_ending": ".nii.gz"}))
    source = data_source(str(root))
    assert source == {"images": str(root / "imagesTr"), "labels": str(root / "labelsTr")}
    train, val, info = build_datasets({**source, **BASE})
    assert info.num_classes == 3 and info.class_names == ["background", "ring", "core"]
    assert len(train) + len(val) == 3


def test_num_classes_scanned_from_the_label_files(tmp_path):
    stems = write_nifti_pairs(tmp_path, n=3)
    write_datalist(tmp_path, stems)  # no "labels" in it
    _, _, info = build_datasets({"datalist": str(tmp_path / "dataset.json"), **BASE})
    assert info.num_classes == 3  # the synthetic labels hold 0, 1, 2
    _, _, info = build_datasets({"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"), **BASE})
    assert info.num_classes == 3
    _, _, info = build_datasets({"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"),
                                 "num_classes": 4, **BASE})
    assert info.num_classes == 4  # given: wins


def test_data_argument_that_is_neither_preset_nor_folder(tmp_path):
    with pytest.raises(DataError, match=r"neither a dataset preset nor a folder.*synthetic-2e.*did you mean "
                                        r"'synthetic-2d'.*IMAGES:LABELS"):
        data_source("synthetic-2e")
    with pytest.raises(DataError, match=r"'some/folder' is neither a dataset preset nor a folder \(no folder "
                                        r"some/folder exists\)"):
        data_source("some/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a dataset.*imagesTr"):
        data_source(str(tmp_path / "empty"))
    assert data_source("synthetic-2d") == {"preset": "synthetic-2d"}


def test_train_cli_on_a_decathlon_folder(tmp_path):
    from click.testing import CliRunner

    from flemme_core.cli import main

    root = _decathlon(tmp_path / "Task09_Toy", {"0": "background", "1": "ring", "2": "core"})
    result = CliRunner().invoke(main, ["train", "--data", str(root), "--encoder", "tiny", "--steps", "1", "-q",
                                       "--set", "encoder.channels=[4,8]", "--set", "data.patch_size=[16,16,16]",
                                       "--set", "train.val_every=0", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "last.safetensors").is_file()
