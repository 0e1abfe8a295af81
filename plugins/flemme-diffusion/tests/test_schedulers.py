"""Scheduler parity: flemme's sampling is exactly MONAI's scheduler loop around flemme's network."""

from __future__ import annotations

import pytest
import torch
from diffusion_helpers import build
from flemme_diffusion import schedules
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler


def fixed_predictor(calls: list):
    """A deterministic stand-in for the network: depends on x and t, records the timesteps it saw."""

    def predictor(x, timesteps=None, context=None):
        t = torch.as_tensor(timesteps).float().reshape(-1)
        calls.append(t.clone())
        return 0.3 * torch.tanh(x) + 0.001 * t.view(-1, *([1] * (x.dim() - 1))) * torch.ones_like(x)

    return predictor


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_matches_monai_step_sequence(monkeypatch, prediction, schedule):
    model = build("ddpm", timesteps=100, prediction=prediction, schedule=schedule)
    calls: list = []
    monkeypatch.setattr(model, "forward", fixed_predictor(calls))
    steps, n, seed = 10, 3, 7
    ours = model.sample(n, sampler="ddim", steps=steps, seed=seed)

    betas = {} if schedule == "cosine" else {"beta_start": 1e-3, "beta_end": 0.2}  # 1000-step range x 10
    sched = DDIMScheduler(num_train_timesteps=100, schedule=schedules.SCHEDULES[schedule],
                          prediction_type=schedules.PREDICTIONS[prediction], clip_sample=True, **betas)
    sched.set_timesteps(steps)
    x = torch.stack([torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])
    reference_calls: list = []
    net = fixed_predictor(reference_calls)
    for t in sched.timesteps:
        x, _ = sched.step(net(x, torch.tensor([t])), int(t), x)
    assert [int(c[0]) for c in calls] == sched.timesteps.tolist(), "the network must see MONAI's timesteps"
    assert torch.equal(ours, (x + 1) / 2), "same noise, same steps: identical samples"


def test_full_ddpm_matches_monai_and_respacing_keeps_the_trained_schedule(monkeypatch):
    model = build("ddpm", timesteps=30, schedule="cosine")
    monkeypatch.setattr(model, "forward", fixed_predictor([]))
    ours = model.sample(2, sampler="ddpm", steps=30, seed=3)
    sched = DDPMScheduler(num_train_timesteps=30, schedule="cosine", clip_sample=True)
    x = torch.stack([torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(3 + i)) for i in range(2)])
    net = fixed_predictor([])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        for t in sched.timesteps:
            x, _ = sched.step(net(x, torch.tensor([t])), int(t), x)
    assert torch.allclose(ours, (x + 1) / 2, atol=1e-6)

    # Respaced: the kept timesteps carry exactly the trained alpha_bar, and the network sees them.
    respaced, kept = schedules.respaced_ddpm(sched, 6)
    assert torch.allclose(respaced.alphas_cumprod, sched.alphas_cumprod[kept])
    assert torch.allclose(torch.cumprod(respaced.alphas, 0), respaced.alphas_cumprod, rtol=1e-5)
    assert kept[-1] == 29 and kept[0] == 0
    calls: list = []
    monkeypatch.setattr(model, "forward", fixed_predictor(calls))
    model.sample(1, sampler="ddpm", steps=6, seed=0)
    assert [int(c[0]) for c in calls] == kept.flip(0).tolist()


def test_min_snr_weights_agree_across_prediction_types():
    """The weight on the x0-error is min(SNR, gamma) whatever the network predicts."""
    snr = torch.tensor([0.01, 1.0, 5.0, 100.0])
    gamma = 5.0
    # ||eps err||^2 = SNR ||x0 err||^2 ; ||v err||^2 = (SNR + 1) ||x0 err||^2
    assert torch.allclose(schedules.min_snr_weight(snr, "epsilon", gamma) * snr, snr.clamp(max=gamma))
    assert torch.allclose(schedules.min_snr_weight(snr, "v", gamma) * (snr + 1), snr.clamp(max=gamma))
    assert torch.allclose(schedules.min_snr_weight(snr, "sample", gamma), snr.clamp(max=gamma))


def test_v_target_is_monai_velocity():
    model = build("ddpm", prediction="v")
    x0, noise, t = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32), torch.tensor([3, 40])
    a = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(model.target(x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6)
