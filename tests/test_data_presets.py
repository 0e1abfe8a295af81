"""Preset catalog and the synthetic presets (fast, no optional packages)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from flemme_core.data import load_preset, preset_names
from flemme_core.data.catalog import PRESETS, register_presets
from flemme_core.errors import ConfigError

EXPECTED = {"mni152-tissue-3d", "mni152-tissue-2d", "stardist-nuclei-2d", "stardist-nuclei-3d", "colin27-aal-2d",
            "colin27-t1-2d", "synthetic-2d", "synthetic-3d"}


def test_register_presets_records_lazy_factories_with_metadata():
    calls = []
    register_presets(lambda name, factory, description="", **meta: calls.append((name, factory, description, meta)))
    assert {c[0] for c in calls} == EXPECTED
    for name, factory, description, meta in calls:
        assert factory.startswith("flemme_core.data.presets:")
        assert description and meta["dims"] in (2, 3) and meta["task"] in ("segmentation", "reconstruction")
        assert isinstance(meta["num_classes"], int)


def test_catalog_import_is_cheap():
    code = ("import sys, flemme_core.data.catalog; "
            "print(sorted(m for m in ('torch', 'monai', 'numpy', 'nilearn', 'stardist') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_builtin_registers_the_presets():
    from flemme_core.registry import Registry

    names = set(Registry().components("dataset"))
    assert EXPECTED <= names
    assert EXPECTED <= set(preset_names())


@pytest.mark.parametrize("name,dims", [("synthetic-2d", 2), ("synthetic-3d", 3)])
def test_synthetic_presets_are_deterministic_and_well_formed(name, dims):
    a, b = load_preset(name, seed=3), load_preset(name, seed=3)
    c = load_preset(name, seed=4)
    assert a.dims == dims and a.num_classes == PRESETS[name][2]["num_classes"]
    for x, y in zip(a.train + a.held_out, b.train + b.held_out):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a.train[0]["image"], c.train[0]["image"])
    item = a.train[0]
    assert item["image"].dtype == np.float32 and item["image"].ndim == dims + 1 and item["image"].shape[0] == 1
    assert item["label"].shape == (1, *item["image"].shape[1:])
    values = set(np.unique(np.concatenate([i["label"].ravel() for i in a.train])).tolist())
    assert values == set(range(a.num_classes))
    # held-out images are different images, not copies of training ones
    assert all(not np.array_equal(h["image"], t["image"]) for h in a.held_out for t in a.train)


def test_synthetic_intensity_tracks_the_label():
    s = load_preset("synthetic-2d", noise=0.05, seed=0)
    img, lab = s.train[0]["image"][0], s.train[0]["label"][0]
    means = [img[lab == k].mean() for k in range(s.num_classes) if (lab == k).any()]
    assert means == sorted(means)


def test_synthetic_options_are_checked():
    s = load_preset("synthetic-2d", size=[32, 48], num_train=2, num_held_out=1, num_classes=4, channels=2)
    assert s.train[0]["image"].shape == (2, 32, 48) and len(s.train) == 2 and len(s.held_out) == 1
    with pytest.raises(ConfigError, match=r"unknown option of preset 'synthetic-2d' 'sise'; did you mean 'size'"):
        load_preset("synthetic-2d", sise=[32, 32])
    with pytest.raises(ConfigError, match=r"size \[32, 32\] must have 3 numbers"):
        load_preset("synthetic-3d", size=[32, 32])
