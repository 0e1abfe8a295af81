"""Reconstruction pairs: k-space under-sampling against a numpy reference, noise pairs, fixed eval seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flemme_core.data import KspaceUndersampled, NoisyPair, PerItemSeeded
from flemme_core.errors import ConfigError


def image(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((1, h, w), np.float32)
    x[0, 10:40, 15:60] = 1.0
    return x + 0.1 * rng.random((1, h, w), dtype=np.float32)


def reference_zero_filled(x: np.ndarray, mask_cols: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT, keep the masked columns, magnitude of the inverse."""
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    k = k * mask_cols[None, None, :]
    return np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))


@pytest.mark.parametrize("pattern", ["random", "equispaced"])
def test_kspace_zero_filled_matches_numpy(pattern):
    x = image()
    t = KspaceUndersampled(pattern=pattern, acceleration=4, center_fraction=0.08, mask_key="mask")
    t.set_random_state(0)
    out = t({"image": x})
    target = (x - x.min()) / (x.max() - x.min())
    np.testing.assert_allclose(out["label"].numpy(), target, atol=1e-6)
    cols = out["mask"][0, 0].numpy()
    assert (out["mask"][0] == out["mask"][0, :1]).all()  # whole lines (columns) are kept or dropped
    w = x.shape[-1]
    n_centre = round(w * 0.08)
    start = (w - n_centre + 1) // 2
    assert cols[start:start + n_centre].all()  # the 8 % centre is fully sampled
    if pattern == "equispaced":
        assert cols.sum() == pytest.approx(w / 4, abs=1)
    else:
        assert 0.1 < cols.mean() < 0.45
    np.testing.assert_allclose(out["image"].numpy(), reference_zero_filled(target, cols), atol=1e-5)
    assert float((out["image"] - out["label"]).abs().mean()) > 1e-3  # the input is degraded


def test_kspace_masks_are_seeded():
    x = image()
    a = KspaceUndersampled(mask_key="m").set_random_state(1)({"image": x})["m"]
    b = KspaceUndersampled(mask_key="m").set_random_state(1)({"image": x})["m"]
    c = KspaceUndersampled(mask_key="m").set_random_state(2)({"image": x})["m"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_kspace_rejects_3d_and_bad_options():
    with pytest.raises(ConfigError, match="needs 2D images"):
        KspaceUndersampled()({"image": np.zeros((1, 8, 8, 8), np.float32)})
    with pytest.raises(ConfigError, match="use 'random' or 'equispaced'"):
        KspaceUndersampled(pattern="radial")
    with pytest.raises(ConfigError, match="center_fraction < 1/acceleration"):
        KspaceUndersampled(acceleration=4, center_fraction=0.5)


@pytest.mark.parametrize("kind", ["gaussian", "rician"])
def test_noise_pairs(kind):
    x = image(128, 128)
    out = NoisyPair(sigma=0.1, kind=kind).set_random_state(0)({"image": x})
    clean = (x - x.min()) / (x.max() - x.min())
    np.testing.assert_allclose(out["label"].numpy(), clean, atol=1e-6)
    residual = (out["image"] - out["label"]).numpy()
    if kind == "gaussian":
        assert residual.std() == pytest.approx(0.1, rel=0.05) and abs(residual.mean()) < 0.01
    else:
        assert (out["image"] >= 0).all()


def test_per_item_seed_is_fixed_per_image_and_differs_between_images():
    t = PerItemSeeded(KspaceUndersampled(mask_key="m"), seed=0)
    a1, a2 = t({"image": image(seed=0)})["m"], t({"image": image(seed=0)})["m"]
    b = t({"image": image(seed=1)})["m"]
    assert torch.equal(a1, a2) and not torch.equal(a1, b)
