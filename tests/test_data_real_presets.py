"""The real presets (optional packages): shapes, labels, and that held-out regions are disjoint
from training ones and split along the right axis. Slow: run with ``pytest -m slow``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flemme_core.data import build_dataloaders, load_preset

pytestmark = pytest.mark.slow
MRICRON = Path("/usr/share/mricron/templates")


def boxes_disjoint(a, b) -> bool:
    return any(a_hi <= b_lo or b_hi <= a_lo for (a_lo, a_hi), (b_lo, b_hi) in zip(a, b))


def labels_of(items):
    return set(np.unique(np.concatenate([i["label"].ravel() for i in items])).tolist())


def test_mni152_3d_splits_anterior_posterior_at_the_brain_middle():
    datasets = pytest.importorskip("nilearn.datasets")
    s = load_preset("mni152-tissue-3d")
    (train,), (held,) = s.train, s.held_out
    assert train["image"].shape == (1, 99, 59, 95) and held["image"].shape == (1, 99, 58, 95)
    assert s.num_classes == 4 and labels_of(s.train) == labels_of(s.held_out) == {0, 1, 2, 3}
    assert s.class_names == ["background", "CSF", "GM", "WM"]
    tb, hb = s.train_where[0]["box"], s.held_out_where[0]["box"]
    assert tb[0] == hb[0] == [0, 99] and tb[2] == hb[2] == [0, 95]  # full x (left-right) and z in both
    assert tb[1] == [0, 59] and hb[1] == [59, 117] and boxes_disjoint(tb, hb)  # split along y only
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    ys = np.where(mask.any(axis=(0, 2)))[0]
    assert abs(59 - (ys.min() + ys.max() + 1) / 2) <= 0.5  # the middle of the brain mask's y-extent
    assert s.affine[1, 1] > 0  # RAS: higher y index = anterior, so the held-out half is the anterior one
    # independent recomputation of labels and intensities
    t1 = datasets.load_mni152_template(resolution=2).get_fdata()
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    label = np.concatenate([train["label"][0], held["label"][0]], axis=1)
    image = np.concatenate([train["image"][0], held["image"][0]], axis=1)
    assert ((label > 0) == mask).all()
    csf = np.clip(mask - gm - wm, 0, None)
    expected = np.argmax(np.stack([csf, gm, wm]), axis=0) + 1
    assert (label[mask] == expected[mask]).mean() == 1.0
    assert abs(image[mask].mean()) < 1e-4 and abs(image[mask].std() - 1) < 1e-4
    np.testing.assert_allclose(image, (t1 - t1[mask].mean()) / t1[mask].std(), atol=1e-4)


def test_mni152_2d_slices_are_the_halves_of_axial_slices():
    pytest.importorskip("nilearn")
    s2, s3 = load_preset("mni152-tissue-2d"), load_preset("mni152-tissue-3d")
    assert len(s2.train) == len(s2.held_out) == 78 and s2.dims == 2
    assert s2.train[0]["image"].shape == (1, 99, 59) and s2.held_out[0]["image"].shape == (1, 99, 58)
    for item, where in zip(s2.train[::10], s2.train_where[::10]):
        np.testing.assert_array_equal(item["label"][0], s3.train[0]["label"][0, :, :, where["z"]])
    for tb, hb in zip(s2.train_where, s2.held_out_where):
        assert tb["z"] == hb["z"] and tb["box"][1] == [0, 59] and hb["box"][1] == [59, 117]
    assert labels_of(s2.held_out) == {0, 1, 2, 3}


def test_stardist_2d_quadrants():
    data = pytest.importorskip("stardist.data")
    s = load_preset("stardist-nuclei-2d")
    assert len(s.train) == 3 and len(s.held_out) == 1 and s.num_classes == 2
    assert all(i["image"].shape == (1, 256, 256) for i in s.train + s.held_out)
    assert s.held_out_where == [{"box": [[256, 512], [256, 512]]}]
    assert all(boxes_disjoint(t["box"], s.held_out_where[0]["box"]) for t in s.train_where)
    raw, mask = data.test_image_nuclei_2d(return_mask=True)
    tl, tr, bl = s.train
    full = np.block([[tl["label"][0], tr["label"][0]], [bl["label"][0], s.held_out[0]["label"][0]]])
    np.testing.assert_array_equal(full, mask > 0)
    lo, hi = np.percentile(raw, [1, 99.8])
    np.testing.assert_allclose(s.held_out[0]["image"][0], (raw[256:, 256:] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)
    assert labels_of(s.train) == labels_of(s.held_out) == {0, 1}


def test_stardist_3d_split_along_y():
    data = pytest.importorskip("stardist.data")
    s = load_preset("stardist-nuclei-3d")
    (train,), (held,) = s.train, s.held_out
    assert train["image"].shape == (1, 31, 40, 57) and held["image"].shape == (1, 31, 21, 57)
    assert boxes_disjoint(s.train_where[0]["box"], s.held_out_where[0]["box"])
    _, mask = data.test_image_nuclei_3d(return_mask=True)
    np.testing.assert_array_equal(np.concatenate([train["label"][0], held["label"][0]], axis=1), mask > 0)
    assert labels_of(s.held_out) == {0, 1}


@pytest.mark.skipif(not (MRICRON / "aal.nii.gz").exists(), reason="needs apt-get install mricron-data")
def test_colin27_aal_slices_mod_10():
    s = load_preset("colin27-aal-2d")
    assert s.num_classes == 117 and len(s.class_names) == 117 and s.class_names[1] == "Precentral_L"
    train_z, held_z = [w["z"] for w in s.train_where], [w["z"] for w in s.held_out_where]
    assert all(z % 10 <= 6 for z in train_z) and all(z % 10 == 8 for z in held_z)
    assert not set(train_z) & set(held_z) and min(abs(a - b) for a in train_z for b in held_z) >= 2
    assert s.train[0]["image"].shape == (1, 181, 217)
    values = labels_of(s.train)
    assert values <= set(range(117)) and len(values) > 100


@pytest.mark.skipif(not (MRICRON / "aal.nii.gz").exists(), reason="needs apt-get install mricron-data")
def test_colin27_aal_whole_slices_at_2x_subsampling():
    """options: {subsample: 2}: every second voxel of the same slices (not averaged: atlas labels),
    padded with background to a multiple of 32 -- whole slices are one patch for any encoder."""
    full, half = load_preset("colin27-aal-2d"), load_preset("colin27-aal-2d", subsample=2)
    assert half.train[0]["image"].shape == half.held_out[0]["label"].shape == (1, 96, 128)
    assert half.patch_size == (96, 128) and half.spacing == (2.0, 2.0)
    assert [w["z"] for w in half.held_out_where] == [w["z"] for w in full.held_out_where]
    for a, b in ((full.train[5], half.train[5]), (full.held_out[2], half.held_out[2])):
        for key in ("image", "label"):
            np.testing.assert_array_equal(b[key][:, :91, :109], a[key][:, ::2, ::2])  # 181x217 -> 91x109
        assert not b["label"][:, 91:].any() and not b["label"][:, :, 109:].any()
        assert np.all(b["image"][:, 91:] == a["image"].min()) and np.all(b["image"][:, :, 109:] == a["image"].min())
    assert np.allclose(np.diag(half.affine)[:2], 2 * np.diag(full.affine)[:2])
    assert "subsampled 2x" in half.preprocessing[0]["why"] and "2x in-plane" in half.held_out_description
    from flemme_core.errors import FlemmeError

    with pytest.raises(FlemmeError, match="subsample must be a whole number >= 1"):
        load_preset("colin27-aal-2d", subsample=0)


def test_colin27_t1_and_its_mni_fallback(monkeypatch):
    from flemme_core.data import presets

    if (MRICRON / "ch2.nii.gz").exists():
        s = load_preset("colin27-t1-2d")
        assert "Colin27" in s.held_out_description and s.train[0]["image"].shape == (1, 181, 217)
        assert s.task == "reconstruction" and "label" not in s.train[0]
        assert all(0 <= i["image"].min() and i["image"].max() <= 1 for i in s.train)
    pytest.importorskip("nilearn")
    monkeypatch.setattr(presets, "MRICRON_DIR", Path("/nonexistent"))
    f = load_preset("colin27-t1-2d")
    assert "MNI152 1 mm (fallback)" in f.held_out_description and f.train[0]["image"].shape == (1, 197, 233)
    assert all(w["z"] % 10 <= 6 for w in f.train_where) and all(w["z"] % 10 == 8 for w in f.held_out_where)


def test_mni152_3d_loader_gives_patches_and_whole_held_out_volume():
    pytest.importorskip("nilearn")
    bundle = build_dataloaders({"preset": "mni152-tissue-3d", "batch_size": 2, "transforms": {"flip": 0.5}})
    assert bundle.info.patch_size == (64, 48, 64) and bundle.info.out_channels == 4
    (batch,) = list(bundle.train_loader)
    assert tuple(batch["image"].shape) == (1, 1, 64, 48, 64)  # one training volume, one patch per step
    (val,) = list(bundle.val_loader)
    assert tuple(val["image"].shape) == (1, 1, 99, 58, 95)
    import torch
    from monai.inferers import sliding_window_inference

    out = sliding_window_inference(val["image"], (64, 48, 64), 2, lambda x: torch.zeros(x.shape[0], 4, *x.shape[2:]))
    assert out.shape == (1, 4, 99, 58, 95)


def test_stardist_2d_loader():
    pytest.importorskip("stardist")
    bundle = build_dataloaders({"preset": "stardist-nuclei-2d", "batch_size": 3,
                                "transforms": {"flip": 0.5, "rotate90": 0.5}})
    (batch,) = list(bundle.train_loader)
    assert tuple(batch["image"].shape) == (3, 1, 128, 128) and set(batch["label"].unique().tolist()) <= {0, 1}
