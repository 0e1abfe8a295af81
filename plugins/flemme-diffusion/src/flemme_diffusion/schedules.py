"""MONAI's noise schedulers, configured from flemme's options (no schedule written by hand).

Two adaptations, both small and documented:

* DDPM with fewer steps than training: MONAI's ``DDPMScheduler.step`` always steps to
  ``t - 1``, so skipping timesteps would be wrong. We *respace* (Nichol & Dhariwal, 2021):
  a ``DDPMScheduler`` whose betas are recomputed from the trained ``alphas_cumprod`` at the
  kept timesteps, and a wrapper that maps its step index back to the trained timestep
  before calling the network. With all steps kept it is MONAI's scheduler unchanged.
* DDIM: MONAI's ``DDIMScheduler`` with ``set_timesteps(steps)``, as is.

``beta_start``/``beta_end`` are given for a 1000-step schedule and scaled to ``timesteps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}
SCHEDULES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta", "cosine": "cosine"}


def _schedule_args(schedule: str, beta_start: float, beta_end: float, timesteps: int) -> dict[str, float]:
    """Beta range for ``timesteps``: the usual values are for 1000 steps, so they are scaled by
    1000 / timesteps (Nichol & Dhariwal, 2021); otherwise a short linear schedule never reaches
    noise (100 steps of 1e-4..2e-2 leave alpha_bar_T = 0.37, and sampling from N(0, I) fails)."""
    if schedule == "cosine":
        return {}
    scale = 1000.0 / timesteps
    return {"beta_start": beta_start * scale, "beta_end": min(beta_end * scale, 0.999)}


def ddpm_scheduler(timesteps: int, schedule: str, prediction: str, beta_start: float = 1e-4,
                   beta_end: float = 2e-2, clip_sample: bool = True):
    """MONAI's DDPMScheduler over the full training schedule (used for training and add_noise)."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=timesteps, schedule=SCHEDULES[schedule],
                         prediction_type=PREDICTIONS[prediction], clip_sample=clip_sample,
                         **_schedule_args(schedule, beta_start, beta_end, timesteps))


def ddim_scheduler(timesteps: int, schedule: str, prediction: str, steps: int, beta_start: float = 1e-4,
                   beta_end: float = 2e-2, clip_sample: bool = True):
    """MONAI's DDIMScheduler set to ``steps`` inference steps."""
    from monai.networks.schedulers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=timesteps, schedule=SCHEDULES[schedule],
                          prediction_type=PREDICTIONS[prediction], clip_sample=clip_sample,
                          **_schedule_args(schedule, beta_start, beta_end, timesteps))
    sched.set_timesteps(steps)
    return sched


def respaced_ddpm(base, steps: int):
    """A DDPMScheduler over ``steps`` kept timesteps of ``base``, and the index -> timestep map."""
    from monai.networks.schedulers import DDPMScheduler

    total = base.num_train_timesteps
    if steps == total:
        return base, None
    kept = torch.linspace(total - 1, 0, steps).round().long().flip(0).unique()  # ascending, distinct
    acp = base.alphas_cumprod[kept].float()
    prev = torch.cat([torch.ones(1), acp[:-1]])
    betas = 1.0 - acp / prev  # no clipping: keeps cumprod(alphas) == the trained alpha_bar
    sched = DDPMScheduler(num_train_timesteps=len(kept), prediction_type=base.prediction_type,
                          clip_sample=base.clip_sample, variance_type=base.variance_type)
    sched.betas, sched.alphas, sched.alphas_cumprod = betas, 1.0 - betas, acp
    sched.timesteps = torch.arange(len(kept) - 1, -1, -1)
    return sched, kept


def with_timestep_map(network: Callable[..., torch.Tensor], timestep_map: torch.Tensor | None):
    """``network`` called with trained timesteps when the scheduler counts respaced indices."""
    if timestep_map is None:
        return network

    def mapped(x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        t = timestep_map.to(x.device)[torch.as_tensor(timesteps, device=x.device).long()]
        return network(x, timesteps=t, context=context)

    return mapped


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps ``t``."""
    a = alphas_cumprod.to(t.device)[t]
    return a / (1.0 - a)


def min_snr_weight(snr_t: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., 2023) expressed for each prediction target.

    The weight on the x0-error is min(SNR, gamma); converting that to the error of the
    predicted quantity gives /SNR for epsilon, /(SNR + 1) for v and 1 for the sample.
    """
    clipped = snr_t.clamp(max=gamma)
    if prediction == "epsilon":
        return clipped / snr_t
    if prediction == "v":
        return clipped / (snr_t + 1.0)
    return clipped
