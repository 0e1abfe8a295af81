"""``ddpm``: denoising diffusion with any family's U-Net as the noise predictor.

Training and sampling go through MONAI's :class:`~monai.inferers.DiffusionInferer` and
its DDPM/DDIM schedulers; flemme only supplies the network (``model(x, timesteps,
context)``), the loss target for the chosen prediction type and optional min-SNR
weighting, EMA and classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from flemme_core.architectures.base import Batch
from flemme_core.config import choice
from flemme_core.errors import ConfigError

from . import schedules
from .denoiser import DenoiserArchitecture, DenoiserOptions, check_sample_request


@dataclasses.dataclass
class DDPMOptions(DenoiserOptions):
    timesteps: int = 1000
    schedule: str = "linear"        # linear | scaled_linear | cosine
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    prediction: str = "epsilon"     # epsilon | v | sample
    loss_weighting: str = "none"    # none | min_snr
    min_snr_gamma: float = 5.0
    clip_sample: bool = True        # clip predicted x0 to [-1, 1] while sampling (pixel space)
    sampler: str = "ddim"           # default sampler: ddpm | ddim
    sample_steps: int = 50
    eta: float = 0.0                # DDIM stochasticity

    def validate(self) -> None:
        super().validate()
        choice(self.schedule, list(schedules.SCHEDULES), "model.arch_options.schedule")
        choice(self.prediction, list(schedules.PREDICTIONS), "model.arch_options.prediction")
        choice(self.loss_weighting, ["none", "min_snr"], "model.arch_options.loss_weighting")
        choice(self.sampler, ["ddpm", "ddim"], "model.arch_options.sampler")
        if self.timesteps < 2:
            raise ConfigError(f"model.arch_options.timesteps must be at least 2, got {self.timesteps}")
        if self.sample_steps < 1:
            raise ConfigError(f"model.arch_options.sample_steps must be >= 1, got {self.sample_steps}")


class DDPM(DenoiserArchitecture):
    """Noise-prediction diffusion (Ho et al., 2020) with DDIM sampling (Song et al., 2021)."""

    Options: ClassVar[type] = DDPMOptions
    samplers: ClassVar[tuple[str, ...]] = ("ddpm", "ddim")

    @property
    def scheduler(self):
        """MONAI's training scheduler (rebuilt on demand: it holds no learned state)."""
        if "_scheduler" not in self.__dict__:  # kept out of the module tree and the state dict
            o = self.options
            self.__dict__["_scheduler"] = schedules.ddpm_scheduler(o.timesteps, o.schedule, o.prediction,
                                                                   o.beta_start, o.beta_end, o.clip_sample)
        return self.__dict__["_scheduler"]

    def default_timesteps(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), self.options.timesteps // 2, device=device)

    # -- training -------------------------------------------------------------------------
    def diffusion_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """(x0 in model range, condition for the inferer, MONAI mode); sdm/ldm override."""
        x0 = self.to_model_range(batch["image"])
        return x0, self.batch_labels(batch, x0.shape[0], x0.device), "crossattn"

    def training_loss(self, batch: Batch, criterion: torch.nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        from monai.inferers import DiffusionInferer

        self.before_step()
        x0, condition, mode = self.diffusion_inputs(batch)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.options.timesteps, (x0.shape[0],), device=x0.device)
        inferer = DiffusionInferer(self.scheduler)
        pred = inferer(inputs=x0, diffusion_model=self, noise=noise, timesteps=t, condition=condition, mode=mode)
        loss, per_t = self._weighted_mse(pred, self.target(x0, noise, t), t)
        return loss, {"mse": float(per_t.mean())}

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.options.prediction
        if p == "epsilon":
            return noise
        if p == "v":
            return self.scheduler.get_velocity(x0, noise, t)
        return x0

    def _weighted_mse(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor):
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        if self.options.loss_weighting == "min_snr":
            w = schedules.min_snr_weight(schedules.snr(self.scheduler.alphas_cumprod, t), self.options.prediction,
                                         self.options.min_snr_gamma)
            return (w * per_sample).mean(), per_sample.detach()
        return per_sample.mean(), per_sample.detach()

    @torch.no_grad()
    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        """Denoising error at 8 fixed timesteps with fixed noise: a deterministic validation loss.

        Sample-quality metrics need the whole held-out set (see :mod:`flemme_diffusion.evaluate`).
        """
        from monai.inferers import DiffusionInferer

        was_training = self.training
        self.eval()  # no label dropout, no BatchNorm updates
        x0, condition, mode = self.diffusion_inputs(batch)
        gen = torch.Generator().manual_seed(0)
        losses = []
        inferer = DiffusionInferer(self.scheduler)
        for t_val in torch.linspace(0, self.options.timesteps - 1, 8).long().tolist():
            noise = torch.randn(x0.shape, generator=gen).to(x0.device)
            t = torch.full((x0.shape[0],), t_val, device=x0.device, dtype=torch.long)
            pred = inferer(inputs=x0, diffusion_model=self, noise=noise, timesteps=t, condition=condition, mode=mode)
            losses.append(float((pred - self.target(x0, noise, t)).pow(2).mean()))
        self.train(was_training)
        return {"loss": sum(losses) / len(losses)}

    # -- sampling -----------------------------------------------------------------------------
    def sampling_scheduler(self, sampler: str, steps: int):
        """(MONAI scheduler, timestep map or None) for a sampler and step count."""
        o = self.options
        if sampler == "ddim":
            return schedules.ddim_scheduler(o.timesteps, o.schedule, o.prediction, steps, o.beta_start,
                                            o.beta_end, o.clip_sample), None
        return schedules.respaced_ddpm(self.scheduler, steps)

    def resolve_sampler(self, sampler: str | None, steps: int | None) -> tuple[str, int]:
        sampler = sampler or self.options.sampler
        if sampler not in self.samplers:
            raise ConfigError(f"{self.config.arch} samples with {' or '.join(self.samplers)}, not {sampler!r}; "
                              f"use --sampler {self.samplers[-1]}")
        return sampler, steps or min(self.options.sample_steps, self.options.timesteps)

    def sample(self, n: int, sampler: str | None = None, steps: int | None = None, seed: int | None = 0,
               condition: Any = None, guidance: float | None = None, progress: bool = False) -> torch.Tensor:
        """``n`` samples in the data range (``input_range``), shape ``(n, C, *image_size)``."""
        check_sample_request(n, steps, self.options.timesteps)
        sampler, steps = self.resolve_sampler(sampler, steps)
        device = next(self.parameters()).device
        labels = self.class_condition(condition, n, device)
        return self._denoise_loop(self.noise(n, seed, device), sampler, steps, labels, "crossattn", seed,
                                  guidance, progress)

    def make_inferer(self, scheduler) -> tuple[Any, dict[str, Any]]:
        """MONAI inferer for sampling and extra arguments of its ``sample`` (ldm: the autoencoder)."""
        from monai.inferers import DiffusionInferer

        return DiffusionInferer(scheduler), {}

    def to_output(self, x: torch.Tensor) -> torch.Tensor:
        """Sampler output -> data range."""
        return self.from_model_range(x)

    def _denoise_loop(self, noise: torch.Tensor, sampler: str, steps: int, conditioning: torch.Tensor | None,
                      mode: str, seed: int | None, guidance: float | None, progress: bool) -> torch.Tensor:
        """MONAI's inferer ``sample``; stochastic DDPM steps draw from a seeded global RNG."""
        scheduler, tmap = self.sampling_scheduler(sampler, steps)
        if sampler == "ddim" and self.options.eta > 0:
            scheduler.step = _with_eta(scheduler.step, self.options.eta)
        guidance = self.options.guidance if guidance is None else guidance
        cfg = guidance if (conditioning is not None and mode == "crossattn" and self.condition == "class"
                           and guidance != 1.0) else None
        inferer, extra = self.make_inferer(scheduler)
        with torch.random.fork_rng(devices=[]), self.sampling_weights():
            if seed is not None:
                torch.manual_seed(int(seed))
            out = inferer.sample(input_noise=noise, diffusion_model=schedules.with_timestep_map(self, tmap),
                                 scheduler=scheduler, conditioning=conditioning, mode=mode, verbose=progress,
                                 cfg=cfg, **extra)
        return self.to_output(out)


def _with_eta(step, eta: float):
    def stepped(model_output, timestep, sample, *args, **kwargs):
        return step(model_output, timestep, sample, eta=eta)

    return stepped
