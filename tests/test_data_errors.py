"""Every bad data input fails before training with a one-line message that names the problem and fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import AFFINE, write_datalist, write_nifti_pairs

from flemme_core.data import DataError, check_data, load_preset
from flemme_core.errors import ConfigError, FlemmeError


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    assert isinstance(excinfo.value, FlemmeError)
    return msg


@pytest.fixture
def nifti_root(tmp_path):
    stems = write_nifti_pairs(tmp_path, n=3)
    return tmp_path, stems


def test_missing_file_in_datalist_is_named(nifti_root):
    root, stems = nifti_root
    path = write_datalist(root, stems)
    doc = json.loads(path.read_text())
    doc["training"][0]["label"] = "labels/nope.nii.gz"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError) as e:
        check_data({"datalist": str(path), "num_classes": 3, "patch_size": [16, 16, 16]})
    msg = one_line(e)
    assert "labels/nope.nii.gz not found" in msg and "training[0].label" in msg and "base_dir" in msg


def test_missing_datalist_and_folders(tmp_path):
    with pytest.raises(DataError, match=r"datalist .*nothere.json not found") as e:
        check_data({"datalist": str(tmp_path / "nothere.json"), "num_classes": 2})
    one_line(e)
    with pytest.raises(DataError, match=r"images folder .*imgs not found") as e:
        check_data({"images": str(tmp_path / "imgs"), "labels": str(tmp_path), "num_classes": 2})
    one_line(e)


def test_image_without_label_in_folders(nifti_root):
    root, _ = nifti_root
    (root / "labels" / "case1.nii.gz").unlink()
    with pytest.raises(DataError) as e:
        check_data({"images": str(root / "images"), "labels": str(root / "labels"), "num_classes": 3})
    assert "no label in" in one_line(e) and "case1" in str(e.value) and "stem" in str(e.value)


def test_shape_mismatch_names_pair_and_both_shapes(nifti_root):
    import nibabel as nib

    root, stems = nifti_root
    nib.save(nib.Nifti1Image(np.zeros((24, 28, 18), np.uint8), AFFINE), str(root / "labels" / "case2.nii.gz"))
    with pytest.raises(DataError) as e:
        check_data({"datalist": str(write_datalist(root, stems, n_val=1)), "num_classes": 3,
                    "patch_size": [16, 16, 16]})
    msg = one_line(e)
    assert "image case2.nii.gz / label case2.nii.gz" in msg and "24x28x20 vs 24x28x18" in msg


def test_affine_mismatch(nifti_root):
    import nibabel as nib

    root, _ = nifti_root
    lab = nib.load(str(root / "labels" / "case1.nii.gz"))
    moved = AFFINE.copy()
    moved[0, 3] += 7.0
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), moved), str(root / "labels" / "case1.nii.gz"))
    with pytest.raises(DataError) as e:
        check_data({"images": str(root / "images"), "labels": str(root / "labels"), "num_classes": 3,
                    "patch_size": [16, 16, 16]})
    msg = one_line(e)
    assert "case1.nii.gz" in msg and "affines differ" in msg and "(-10, -20, 5)" in msg and "(-3, -20, 5)" in msg


def test_label_values_outside_classes(nifti_root):
    root, _ = nifti_root
    with pytest.raises(DataError) as e:
        check_data({"images": str(root / "images"), "labels": str(root / "labels"), "num_classes": 2,
                    "patch_size": [16, 16, 16]})
    msg = one_line(e)
    assert "values 2 outside the 2 configured classes 0..1" in msg and ".nii.gz" in msg and "num_classes" in msg


def test_label_values_of_a_plugin_preset_are_checked():
    from flemme_core.data import checks

    item = {"image": np.zeros((1, 8, 8), np.float32), "label": np.full((1, 8, 8), 5)}
    with pytest.raises(DataError, match=r"label my-set train item 0 has values 5 outside the 3 configured") as e:
        checks.check_arrays([item], dims=2, num_classes=3, where="my-set train")
    one_line(e)


def test_empty_dataset(tmp_path):
    (tmp_path / "dl.json").write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(DataError) as e:
        check_data({"datalist": str(tmp_path / "dl.json"), "num_classes": 2})
    assert "training list of datalist" in one_line(e) and "is empty" in str(e.value)
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    with pytest.raises(DataError, match="no image files in") as e:
        check_data({"images": str(tmp_path / "i"), "labels": str(tmp_path / "l"), "num_classes": 2})
    one_line(e)


def test_single_case_without_validation(nifti_root):
    root, stems = nifti_root
    path = root / "one.json"
    path.write_text(json.dumps({"training": [{"image": f"images/{stems[0]}.nii.gz",
                                              "label": f"labels/{stems[0]}.nii.gz"}]}))
    with pytest.raises(DataError, match=r"only 1 training item\(s\) and no validation list") as e:
        check_data({"datalist": str(path), "num_classes": 3})
    one_line(e)


def test_patch_larger_than_image_says_both_sizes_and_the_fix(nifti_root):
    root, stems = nifti_root
    with pytest.raises(DataError) as e:
        check_data({"datalist": str(write_datalist(root, stems)), "num_classes": 3, "patch_size": [16, 16, 32]})
    msg = one_line(e)
    assert "[16, 16, 32] is larger than training image case" in msg and "(24x28x20)" in msg
    assert "at most [24, 28, 20]" in msg and "pad: true" in msg


def test_patch_check_accounts_for_resampling(nifti_root):
    root, stems = nifti_root
    cfg = {"datalist": str(write_datalist(root, stems)), "num_classes": 3, "patch_size": [32, 32, 32],
           "transforms": {"spacing": [1.0, 1.0, 1.0]}}
    info = check_data(cfg)  # 24x28x20 voxels of 1.5x1.5x2 mm -> 36x42x40 at 1 mm
    assert info.spacing == (1.0, 1.0, 1.0)
    cfg["transforms"] = {"spacing": [2.0, 2.0, 2.0]}
    with pytest.raises(DataError, match=r"\(18x21x20\)") as e:
        check_data(cfg)
    one_line(e)


def test_patch_larger_than_preset_image():
    with pytest.raises(DataError) as e:
        check_data({"preset": "synthetic-2d", "options": {"size": [40, 64]}, "patch_size": [64, 64]})
    assert "larger than training image preset synthetic-2d train item 0 (40x64) on axis 0" in one_line(e)
    info = check_data({"preset": "synthetic-2d", "options": {"size": [40, 64]}, "patch_size": [64, 64],
                       "transforms": {"pad": True}})
    assert info.patch_size == (64, 64)


def test_unknown_transform_name_lists_close_matches():
    with pytest.raises(ConfigError) as e:
        check_data({"preset": "synthetic-2d", "transforms": {"flipp": 0.5}})
    msg = one_line(e)
    assert msg.startswith("unknown transform 'flipp'; did you mean 'flip'?") and "rotate90" in msg
    with pytest.raises(ConfigError, match=r"unknown option of transform 'rotate' 'degree'; did you mean 'degrees'"):
        check_data({"preset": "synthetic-2d", "transforms": {"rotate": {"degree": 10}}})
    with pytest.raises(ConfigError, match=r"unknown data.transforms.normalize name 'zscor'; did you mean 'zscore'"):
        check_data({"preset": "synthetic-2d", "transforms": {"normalize": "zscor"}})


def test_unknown_preset_name_lists_close_matches():
    with pytest.raises(ConfigError) as e:
        check_data({"preset": "mni152-tisue-3d"})
    msg = one_line(e)
    assert msg.startswith("unknown dataset preset 'mni152-tisue-3d'; did you mean 'mni152-tissue-3d'")
    with pytest.raises(ConfigError):
        load_preset("stardist")


@pytest.mark.parametrize("cfg,pattern", [
    ({"preset": "synthetic-2d", "batchsize": 2}, r"unknown data key 'batchsize'; did you mean 'batch_size'"),
    ({"preset": "synthetic-2d", "datalist": "x.json"}, r"exactly one of preset, datalist or images\+labels"),
    ({"images": "x"}, r"data.images needs data.labels"),
    ({"preset": "synthetic-2d", "patch_size": [32, 32, 32]}, r"has 3 numbers but the data is 2D"),
    ({"preset": "synthetic-2d", "patch_size": [64, 32], "transforms": {"rotate90": 0.5}},
     r"rotate90 turns axes 0 and 1 but the patch is 64 x 32"),
    ({"preset": "synthetic-3d", "transforms": {"orientation": "RAS"}}, r"orientation applies to image files"),
    ({"preset": "synthetic-3d", "transforms": {"kspace": True}}, r"kspace simulates 2D"),
    ({"preset": "synthetic-2d", "transforms": {"kspace": True, "denoise": True}}, r"keep one"),
    ({"preset": "synthetic-2d", "transforms": {"flip": 2}}, r"probability must be in \[0, 1\]"),
    ({"preset": "synthetic-2d", "batch_size": 0}, r"data.batch_size must be a positive integer"),
])
def test_config_mistakes(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        check_data(cfg)
    one_line(e)


def test_file_sources_num_classes_must_be_positive(nifti_root):
    """Left out, the data says it (tests/test_data_folders.py); given, it must be a count."""
    root, _ = nifti_root
    with pytest.raises(ConfigError, match="data.num_classes must be a positive integer") as e:
        check_data({"images": str(root / "images"), "labels": str(root / "labels"), "num_classes": 0})
    one_line(e)


def test_multichannel_png_label_is_refused(tmp_path):
    from data_helpers import write_png_pairs
    from PIL import Image

    write_png_pairs(tmp_path, n=3)
    rgb = np.zeros((40, 56, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "labels" / "c0.png")
    with pytest.raises(DataError, match=r"label c0.png has 3 channels; save labels as single-channel") as e:
        check_data({"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"), "num_classes": 3,
                    "patch_size": [32, 32]})
    one_line(e)


def test_unreadable_file(nifti_root):
    root, _ = nifti_root
    (root / "images" / "case0.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"cannot read case0.nii.gz") as e:
        check_data({"images": str(root / "images"), "labels": str(root / "labels"), "num_classes": 3})
    one_line(e)
