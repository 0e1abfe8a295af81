"""build_dataloaders / build_datasets: batches, determinism, samplers, file sources, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import AFFINE, write_datalist, write_dicom_series, write_nifti_pairs, write_png_pairs

from flemme_core.data import build_dataloaders, build_datasets, check_data, load_preset


def batches(loader, n=None):
    out = []
    for i, b in enumerate(loader):
        out.append(b)
        if n is not None and i + 1 >= n:
            break
    return out


def test_preset_loaders_shapes_and_types():
    bundle = build_dataloaders({"preset": "synthetic-2d", "batch_size": 4, "patch_size": [32, 32],
                                "transforms": {"flip": 0.5, "rotate90": 0.5}}, seed=0)
    info = bundle.info
    assert (info.task, info.dims, info.in_channels, info.num_classes, info.out_channels) == \
        ("segmentation", 2, 1, 3, 3)
    assert info.patch_size == (32, 32) and info.num_train == 8 and info.num_held_out == 2
    assert "separately generated" in info.held_out_description
    train = batches(bundle.train_loader)
    assert [tuple(b["image"].shape) for b in train] == [(4, 1, 32, 32), (4, 1, 32, 32)]
    assert train[0]["image"].dtype == torch.float32 and train[0]["label"].dtype == torch.int64
    assert type(train[0]["image"]) is torch.Tensor  # plain tensors, no MetaTensor overhead
    assert set(torch.cat([b["label"].unique() for b in train]).tolist()) <= {0, 1, 2}
    val = batches(bundle.val_loader)
    assert [tuple(b["image"].shape) for b in val] == [(1, 1, 64, 64)] * 2  # held-out images are whole
    held = load_preset("synthetic-2d")
    np.testing.assert_array_equal(val[0]["label"][0].numpy(), held.held_out[0]["label"])


def test_same_seed_same_batches_other_seed_differs():
    cfg = {"preset": "synthetic-3d", "batch_size": 2, "patch_size": [16, 16, 16],
           "transforms": {"flip": 0.5, "rotate": 0.5, "crop": {"num_samples": 2}}}

    def run(seed, **kw):
        return [b["image"] for b in batches(build_dataloaders(dict(cfg, **kw), seed=seed).train_loader)]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert a[0].shape == (4, 1, 16, 16, 16)  # batch_size x num_samples patches
    d = run(7, cache=False)
    assert all(torch.equal(x, y) for x, y in zip(a, d))  # caching changes nothing


def test_worker_processes_are_deterministic():
    cfg = {"preset": "synthetic-2d", "batch_size": 2, "patch_size": [32, 32], "num_workers": 1,
           "transforms": {"flip": 0.5}}
    a = [b["image"] for b in batches(build_dataloaders(cfg, seed=1).train_loader)]
    b = [b["image"] for b in batches(build_dataloaders(cfg, seed=1).train_loader)]
    assert len(a) == 4 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_distributed_shards_are_disjoint_and_cover_the_set():
    cfg = {"preset": "synthetic-2d", "batch_size": 1, "patch_size": [32, 32]}
    seen = []
    for rank in range(2):
        bundle = build_dataloaders(cfg, seed=0, distributed=True, rank=rank, world_size=2)
        bundle.train_sampler.set_epoch(0)
        seen.append(list(bundle.train_sampler))
        assert len(bundle.train_loader) == 4
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(8))


def test_sampler_hook_overrides_the_order():
    calls = []

    def sampler(dataset):
        calls.append(len(dataset))
        return torch.utils.data.SequentialSampler(dataset)

    bundle = build_dataloaders({"preset": "synthetic-2d", "batch_size": 8, "transforms": {"crop": "none"}},
                               sampler=sampler)
    assert calls == [8] and bundle.train_sampler is not None
    (batch,) = batches(bundle.train_loader)
    held = load_preset("synthetic-2d")
    np.testing.assert_array_equal(batch["label"][3].numpy(), held.train[3]["label"])  # no crop, in order


def test_label_crop_centres_on_foreground():
    bundle = build_dataloaders({"preset": "synthetic-3d", "batch_size": 4, "patch_size": [9, 9, 9],
                                "transforms": {"crop": {"name": "label", "pos": 1, "neg": 0}}}, seed=0)
    for b in batches(bundle.train_loader):
        assert (b["label"][:, 0, 4, 4, 4] > 0).all()  # the centre voxel of every patch is foreground


def test_augmentations_keep_image_and_label_aligned():
    """With noise 0 the image is a function of the label; spatial augmentations must preserve it."""
    cfg = {"preset": "synthetic-2d", "options": {"noise": 0.0}, "batch_size": 4, "patch_size": [32, 32],
           "transforms": {"flip": 1.0, "rotate90": 1.0, "crop": "random"}}
    levels = torch.tensor([0.0, 0.5, 1.0])
    for b in batches(build_dataloaders(cfg, seed=3).train_loader):
        torch.testing.assert_close(b["image"], levels[b["label"]])


def test_flip_is_a_flip():
    held = load_preset("synthetic-2d")
    cfg = {"preset": "synthetic-2d", "batch_size": 8, "transforms": {"crop": "none", "flip": {"prob": 1.0,
                                                                                           "axes": [1]}}}
    (batch,) = batches(build_dataloaders(cfg, sampler=torch.utils.data.SequentialSampler).train_loader)
    np.testing.assert_array_equal(batch["image"][2].numpy(), held.train[2]["image"][:, :, ::-1])


def test_rotate_and_elastic_keep_shapes_and_classes():
    for tf in ({"rotate": {"prob": 1.0, "degrees": 20}}, {"elastic": 1.0}):
        for name, patch in (("synthetic-2d", [32, 32]), ("synthetic-3d", [16, 16, 16])):
            bundle = build_dataloaders({"preset": name, "batch_size": 2, "patch_size": patch, "transforms": tf})
            b = batches(bundle.train_loader, 1)[0]
            assert tuple(b["image"].shape[2:]) == tuple(patch)
            assert set(b["label"].unique().tolist()) <= {0, 1, 2}


def test_nifti_datalist_with_orientation_and_spacing(tmp_path):
    stems = write_nifti_pairs(tmp_path, n=4)
    cfg = {"datalist": str(write_datalist(tmp_path, stems)), "num_classes": 3, "patch_size": [16, 16, 16],
           "batch_size": 2, "transforms": {"orientation": "RAS", "spacing": [1.5, 1.5, 1.5], "flip": 0.5}}
    bundle = build_dataloaders(cfg, seed=0)
    assert bundle.info.dims == 3 and bundle.info.num_train == 3 and bundle.info.num_held_out == 1
    assert bundle.info.spacing == (1.5, 1.5, 1.5)
    b = batches(bundle.train_loader)
    assert [tuple(x["image"].shape) for x in b] == [(2, 1, 16, 16, 16), (1, 1, 16, 16, 16)]
    (val,) = batches(bundle.val_loader)
    assert tuple(val["image"].shape) == (1, 1, 24, 28, 26)  # 20 slices of 2 mm -> 26-27 of 1.5 mm
    img = val["image"][0, 0]
    assert abs(float(img.mean())) < 1e-4 and abs(float(img.std()) - 1) < 1e-2  # default z-score


def test_folder_pairs_split_off_a_seeded_validation_set(tmp_path):
    write_nifti_pairs(tmp_path, n=5)
    cfg = {"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"), "num_classes": 3,
           "patch_size": [16, 16, 16], "val_fraction": 0.4}
    _, val_a, info = build_datasets(cfg, seed=0)
    _, val_b, _ = build_datasets(cfg, seed=0)
    assert info.num_train == 3 and info.num_held_out == 2 and "2 of 5 cases" in info.held_out_description
    assert [d["image"] for d in val_a.data] == [d["image"] for d in val_b.data]


def test_png_folders_with_percentile_scaling(tmp_path):
    write_png_pairs(tmp_path, n=4, size=(40, 56))
    cfg = {"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"), "num_classes": 3,
           "patch_size": [32, 32], "batch_size": 2, "transforms": {"normalize": {"name": "percentile",
                                                                                 "lower": 0, "upper": 100}}}
    bundle = build_dataloaders(cfg, seed=0)
    assert bundle.info.dims == 2 and bundle.info.in_channels == 1
    (val,) = batches(bundle.val_loader)
    assert tuple(val["image"].shape) == (1, 1, 56, 40)  # MONAI's PIL reader: (width, height)
    assert float(val["image"].min()) == 0.0 and float(val["image"].max()) == 1.0


def test_nrrd_is_read_through_monai(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    from flemme_core.data.synthetic import make_synthetic

    s = make_synthetic(3, size=(20, 24, 16), num_train=3, num_held_out=1)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.8, 0.8, 2.0]),
              "space origin": np.zeros(3)}
    for i, item in enumerate(s.train):
        nrrd.write(str(tmp_path / "images" / f"c{i}.nrrd"), item["image"][0], header)
        nrrd.write(str(tmp_path / "labels" / f"c{i}.nrrd"), item["label"][0].astype(np.uint8), header)
    info = check_data({"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"), "num_classes": 3,
                       "patch_size": [16, 16, 16]})
    assert info.dims == 3 and info.num_train + info.num_held_out == 3
    assert info.spacing == pytest.approx((0.8, 0.8, 2.0))


def test_dicom_series_folders_pair_by_name(tmp_path):
    pytest.importorskip("pydicom")
    from flemme_core.data.synthetic import make_synthetic

    s = make_synthetic(3, size=(8, 20, 24), num_train=3, num_held_out=1)
    for i, item in enumerate(s.train):
        write_dicom_series(tmp_path / "images" / f"case{i}", np.round(item["image"][0] * 1000 + 1000))
        write_dicom_series(tmp_path / "labels" / f"case{i}", item["label"][0])
    cfg = {"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"), "num_classes": 3,
           "patch_size": [16, 16, 8], "batch_size": 2}
    bundle = build_dataloaders(cfg, seed=0)
    assert bundle.info.dims == 3 and bundle.info.spacing == pytest.approx((0.8, 0.7, 2.0))
    (val,) = batches(bundle.val_loader)
    assert tuple(val["image"].shape) == (1, 1, 24, 20, 8)  # MONAI: (columns, rows, slices)
    assert set(val["label"].unique().tolist()) <= {0, 1, 2}


def test_reconstruction_pairs_from_a_labelled_2d_preset():
    cfg = {"preset": "synthetic-2d", "batch_size": 2, "patch_size": [32, 32],
           "transforms": {"kspace": {"pattern": "equispaced"}}}
    bundle = build_dataloaders(cfg, seed=0)
    assert bundle.info.task == "reconstruction" and bundle.info.out_channels == 1 and bundle.info.num_classes == 0
    b = batches(bundle.train_loader, 1)[0]
    assert b["label"].dtype == torch.float32 and b["image"].shape == b["label"].shape == (2, 1, 32, 32)
    assert float(b["label"].min()) >= 0 and float(b["label"].max()) <= 1
    first = [v["image"] for v in batches(bundle.val_loader)]
    again = [v["image"] for v in batches(bundle.val_loader)]
    uncached = [v["image"] for v in batches(build_dataloaders(dict(cfg, cache=False), seed=0).val_loader)]
    assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(first, again, uncached))


def test_image_only_plugin_preset_defaults_to_kspace_pairs():
    from flemme_core.data.splits import DatasetSplits
    from flemme_core.hookspecs import hookimpl
    from flemme_core.registry import get_registry

    def tiny(**_):
        rng = np.random.default_rng(0)
        items = [{"image": rng.random((1, 48, 48), dtype=np.float32)} for _ in range(3)]
        return DatasetSplits("tiny-recon", items[:2], items[2:], num_classes=0, dims=2, task="reconstruction",
                             held_out_description="image 3", patch_size=(32, 32))

    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register("tiny-recon", tiny, description="test preset", dims=2, task="reconstruction", num_classes=0)

    plugin = Plugin()
    get_registry().register_plugin(plugin, name="tiny")
    try:
        bundle = build_dataloaders({"preset": "tiny-recon", "batch_size": 2}, seed=0)
    finally:
        get_registry().unregister_plugin(plugin)
    b = batches(bundle.train_loader, 1)[0]
    assert bundle.info.task == "reconstruction" and b["image"].shape == b["label"].shape == (2, 1, 32, 32)
    assert not torch.equal(b["image"], b["label"])


def test_affine_check_tolerates_float_noise(tmp_path):
    import nibabel as nib

    stems = write_nifti_pairs(tmp_path, n=3)
    lab = nib.load(str(tmp_path / "labels" / "case0.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), AFFINE + 1e-6), str(tmp_path / "labels" / "case0.nii.gz"))
    assert check_data({"datalist": str(write_datalist(tmp_path, stems)), "num_classes": 3}).num_train == 2
