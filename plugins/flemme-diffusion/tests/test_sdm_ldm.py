"""sdm ensembles and condition checks; ldm records its autoencoder and refuses another."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusion_helpers import build, tiny

from flemme_core.build import build_model
from flemme_core.checkpoint import load_model, save_model
from flemme_core.errors import CheckpointError, ShapeError


@pytest.mark.parametrize("mode", ["concat", "inject"])
def test_sdm_ensemble_mean_and_spread(mode):
    model = build("sdm", size=16, condition_mode=mode, timesteps=20)
    x = torch.rand(3, 1, 16, 16)
    mean, std = model.predict_with_uncertainty(x, n=4, steps=3)
    assert mean.shape == std.shape == (3, 1, 16, 16)
    assert (std > 0).any() and (std >= 0).all()
    samples = model.sample(4, steps=3, condition=x[1], seed=0)
    expected = model.predict_with_uncertainty(x[1:2], n=4, steps=3, seed=0)
    assert torch.allclose(samples.mean(0), expected[0][0], atol=1e-5)
    assert torch.allclose(samples.std(0, unbiased=False), expected[1][0], atol=1e-5)
    _, one_std = model.predict_with_uncertainty(x, n=1, steps=2)
    assert torch.equal(one_std, torch.zeros_like(one_std))


def test_sdm_condition_shape_errors():
    model = build("sdm", size=16, timesteps=20)
    with pytest.raises(ShapeError, match="condition has shape"):
        model.sample(2, steps=2, condition=torch.rand(1, 8, 8))
    with pytest.raises(ShapeError, match="condition has shape"):
        model.sample(2, steps=2, condition=torch.rand(3, 1, 16, 16))
    with pytest.raises(ShapeError, match="input image"):
        model.sample(2, steps=2)


def test_class_condition_errors_and_guidance():
    model = build("ddpm", size=16, num_classes=3, timesteps=20)
    out = model.sample(2, steps=2, condition=[0, 2], guidance=2.0)
    assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ShapeError, match="out of range"):
        model.sample(2, steps=2, condition=3)
    with pytest.raises(ShapeError, match="one index or 2"):
        model.sample(2, steps=2, condition=[0, 1, 2])
    with pytest.raises(ShapeError, match="unconditional"):
        build("ddpm", size=16, timesteps=20).sample(1, steps=2, condition=1)


def _save_autoencoder(path, arch="vae", **opts):
    cfg = tiny(arch, size=32)
    cfg["arch_options"] = opts
    model = build_model(cfg)
    save_model(model, path)
    return model


def test_ldm_records_its_autoencoder_and_refuses_another(tmp_path):
    ae_path, other = tmp_path / "vae.safetensors", tmp_path / "other.safetensors"
    _save_autoencoder(ae_path, latent_channels=2)
    _save_autoencoder(other, latent_channels=2)
    model = build("ldm", autoencoder=str(ae_path), timesteps=20)
    assert model.data_channels() == 2 and model.latent_size() == [8, 8]  # cnn: stride-2 stem + one down
    loss, _ = model.training_loss({"image": torch.rand(2, 1, 32, 32)}, torch.nn.MSELoss())
    loss.backward()
    assert float(model.latent_scale) > 0
    assert model.sample(2, steps=2).shape == (2, 1, 32, 32), "decoded to image space"
    assert not any(k.startswith("autoencoder") for k in model.state_dict()), "frozen autoencoder stays in its file"
    save_model(model, tmp_path / "ldm.safetensors")
    assert len(model.config.arch_options["autoencoder_sha256"]) == 64

    reloaded = load_model(tmp_path / "ldm.safetensors")
    assert float(reloaded.latent_scale) == float(model.latent_scale)
    shutil.copy(other, ae_path)  # same config, different weights
    with pytest.raises(CheckpointError, match="not the autoencoder this ldm was trained over"):
        load_model(tmp_path / "ldm.safetensors")
    ae_path.unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "ldm.safetensors")


def test_ldm_over_a_plain_ae(tmp_path):
    _save_autoencoder(tmp_path / "ae.safetensors", arch="ae")
    model = build("ldm", autoencoder=str(tmp_path / "ae.safetensors"), timesteps=20)
    assert model.data_channels() == 32, "an ae's latent is its bottleneck feature"
    assert model.sample(1, steps=2).shape == (1, 1, 32, 32)
