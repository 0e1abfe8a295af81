"""VAE's KL against torch.distributions and EDM's preconditioning against the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_helpers import build
from flemme_diffusion.edm import edm_coefficients, edm_loss_weight, karras_sigmas
from flemme_diffusion.vae import gaussian_kl
from torch.distributions import Normal, kl_divergence


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(gaussian_kl(mu, logvar), ref, atol=1e-5)
    assert torch.allclose(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


@pytest.mark.parametrize("vector_dim", [None, 6])
def test_vae_loss_is_reconstruction_plus_warmed_up_kl(vector_dim):
    model = build("vae", kl_weight=0.5, kl_warmup=4, vector_dim=vector_dim, latent_channels=3)
    batch = {"image": torch.rand(2, 1, 32, 32)}
    weights = []
    for _ in range(6):
        _, logs = model.training_loss(batch, torch.nn.MSELoss())
        weights.append(logs["kl_weight"])
    assert weights == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    expected = [vector_dim] if vector_dim else [3, 8, 8]  # cnn: stride-2 stem + one down = 4x
    assert model.latent_shape == expected
    model.eval()
    torch.manual_seed(1)
    loss, logs = model.training_loss(batch, torch.nn.MSELoss())
    torch.manual_seed(1)
    mu, logvar = model.encode_stats(batch["image"])
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    recon = torch.nn.functional.mse_loss(model.decode_latent(z), batch["image"])
    kl = gaussian_kl(mu, logvar).mean() / (32 * 32)
    assert torch.allclose(loss, recon + 0.5 * kl, atol=1e-6)


def test_vae_samples_are_seeded_per_sample():
    model = build("vae")
    a, b = model.sample(3, seed=5), model.sample(2, seed=5)
    assert a.shape == (3, 1, 32, 32)
    # equal up to float rounding: a different batch size may pick another conv kernel
    assert torch.allclose(a[:2], b, atol=1e-5, rtol=1e-5), "sample i depends on seed + i only"
    assert not torch.allclose(a[0], a[1])


def test_edm_coefficients_match_karras_table_1():
    sd = 0.5
    for s in [0.002, 0.1, 0.5, 1.0, 80.0]:
        sigma = torch.tensor([s], dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = (float(v) for v in edm_coefficients(sigma, sd))
        assert c_skip == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert c_out == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_in == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_noise == pytest.approx(math.log(s) / 4, rel=1e-12)
        # Unit variance of the network's input and target (the point of the preconditioning),
        # and lambda * c_out^2 = 1 (the effective loss weight on F is 1).
        assert c_in**2 * (sd**2 + s**2) == pytest.approx(1.0)
        assert float(edm_loss_weight(sigma, sd)) * c_out**2 == pytest.approx(1.0)
    sigma = torch.tensor([sd], dtype=torch.float64)
    assert float(edm_coefficients(sigma, sd)[0]) == pytest.approx(0.5)


def test_karras_grid_and_heun_sampler_with_an_exact_denoiser(monkeypatch):
    grid = karras_sigmas(5, 0.002, 80.0, 7.0)
    assert len(grid) == 6 and grid[0] == pytest.approx(80.0) and grid[-2] == pytest.approx(0.002) and grid[-1] == 0
    assert (grid[:-1] > grid[1:]).all()
    model = build("edm")
    target = torch.linspace(-0.8, 0.8, 32 * 32).view(1, 1, 32, 32)
    calls = []

    def exact_denoiser(x, sigma, labels=None):  # data = a point mass at ``target``
        calls.append(float(sigma[0]))
        return target.expand_as(x)

    monkeypatch.setattr(model, "denoise", exact_denoiser)
    out = model.sample(2, steps=5, seed=0)
    assert torch.allclose(out, (target + 1) / 2, atol=1e-6), "Heun on an exact denoiser lands on the data"
    assert len(calls) == 2 * 5 - 1, "Heun: one evaluation per step plus a correction except the last"
    assert calls[0] == pytest.approx(80.0)
