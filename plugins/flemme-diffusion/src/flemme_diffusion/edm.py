"""``edm``: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models".

The U-Net ``F`` is wrapped by the preconditioning of the paper's Table 1:

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)      c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_d^2)           c_noise = ln(sigma) / 4

trained with ln(sigma) ~ N(P_mean, P_std^2) and weight lambda = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2,
and sampled with the deterministic 2nd-order Heun sampler (Algorithm 1) on the rho-spaced
sigma grid. MONAI has no EDM scheduler, so this loop is the one written here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from flemme_core.architectures.base import Batch
from flemme_core.errors import ConfigError

from .denoiser import DenoiserArchitecture, DenoiserOptions, check_sample_request

#: the network sees c_noise scaled to the range of discrete timesteps (sinusoid frequencies)
NOISE_SCALE = 1000.0


@dataclasses.dataclass
class EDMOptions(DenoiserOptions):
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sample_steps: int = 18          # Heun: 2 * steps - 1 network evaluations

    def validate(self) -> None:
        super().validate()
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError("model.arch_options needs 0 < sigma_min < sigma_max")
        if self.sigma_data <= 0 or self.p_std <= 0 or self.rho <= 0:
            raise ConfigError("model.arch_options sigma_data, p_std and rho must be positive")
        if self.sample_steps < 1:
            raise ConfigError(f"model.arch_options.sample_steps must be >= 1, got {self.sample_steps}")


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. (2022), Table 1."""
    s2 = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / s2, sigma * sigma_data / s2.sqrt(), 1.0 / s2.sqrt(), sigma.log() / 4.0


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2: unit effective weight on F's error."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """sigma_0 > ... > sigma_{N-1} on the rho grid, then sigma_N = 0 (steps + 1 values)."""
    if steps == 1:
        grid = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        i = torch.arange(steps, dtype=torch.float64)
        grid = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([grid, torch.zeros(1, dtype=torch.float64)])


class EDM(DenoiserArchitecture):
    """Preconditioned denoiser; ``forward`` is the raw network F (time input = c_noise)."""

    Options: ClassVar[type] = EDMOptions
    samplers: ClassVar[tuple[str, ...]] = ("edm",)

    def default_timesteps(self, batch: int, device: torch.device) -> torch.Tensor:
        sigma = torch.full((batch,), self.options.sigma_data, device=device)
        return edm_coefficients(sigma, self.options.sigma_data)[3] * NOISE_SCALE

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) for a per-sample ``sigma`` of shape (B,)."""
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma.float(), self.options.sigma_data)
        view = (-1,) + (1,) * (x.dim() - 1)
        f = self(c_in.view(view) * x, c_noise * NOISE_SCALE, labels)
        return c_skip.view(view) * x + c_out.view(view) * f

    def _loss_at(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                 labels: torch.Tensor | None) -> torch.Tensor:
        view = (-1,) + (1,) * (x0.dim() - 1)
        d = self.denoise(x0 + sigma.view(view) * noise, sigma, labels)
        per_sample = (d.float() - x0.float()).pow(2).flatten(1).mean(1)
        return edm_loss_weight(sigma, self.options.sigma_data) * per_sample

    def training_loss(self, batch: Batch, criterion: torch.nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        self.before_step()
        x0 = self.to_model_range(batch["image"])
        labels = self.batch_labels(batch, x0.shape[0], x0.device)
        o = self.options
        sigma = (torch.randn(x0.shape[0], device=x0.device) * o.p_std + o.p_mean).exp()
        loss = self._loss_at(x0, sigma, torch.randn_like(x0), labels).mean()
        return loss, {"weighted_mse": float(loss.detach())}

    @torch.no_grad()
    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        """Weighted denoising loss at 8 fixed sigmas (log-spaced over the training range), fixed noise."""
        was_training = self.training
        self.eval()
        x0 = self.to_model_range(batch["image"])
        labels = self.batch_labels(batch, x0.shape[0], x0.device)
        o = self.options
        gen = torch.Generator().manual_seed(0)
        total = 0.0
        for s in torch.linspace(o.p_mean - 2 * o.p_std, o.p_mean + 2 * o.p_std, 8).exp().tolist():
            sigma = torch.full((x0.shape[0],), s, device=x0.device)
            noise = torch.randn(x0.shape, generator=gen).to(x0.device)
            total += float(self._loss_at(x0, sigma, noise, labels).mean())
        self.train(was_training)
        return {"loss": total / 8}

    # -- sampling ---------------------------------------------------------------------------
    def _guided(self, x: torch.Tensor, sigma: float, labels: torch.Tensor | None, guidance: float) -> torch.Tensor:
        s = torch.full((x.shape[0],), sigma, device=x.device)
        if labels is None or guidance == 1.0:
            return self.denoise(x, s, labels)
        uncond = self.denoise(x, s, torch.full_like(labels, -1.0))
        return uncond + guidance * (self.denoise(x, s, labels) - uncond)

    def sample(self, n: int, sampler: str | None = None, steps: int | None = None, seed: int | None = 0,
               condition: Any = None, guidance: float | None = None, progress: bool = False) -> torch.Tensor:
        """Heun sampling (Karras et al., Algorithm 1); ``steps`` sigmas -> 2 * steps - 1 evaluations."""
        check_sample_request(n, steps, None)
        if sampler not in (None, "edm"):
            raise ConfigError(f"an edm model samples with its Heun sampler; use --sampler edm, not {sampler!r}")
        o = self.options
        steps = steps or o.sample_steps
        device = next(self.parameters()).device
        labels = self.class_condition(condition, n, device)
        guidance = o.guidance if guidance is None else guidance
        sigmas = karras_sigmas(steps, o.sigma_min, o.sigma_max, o.rho).tolist()
        with self.sampling_weights():
            x = self.noise(n, seed, device) * sigmas[0]
            for i in _progress(range(steps), progress):
                s_cur, s_next = sigmas[i], sigmas[i + 1]
                d = (x - self._guided(x, s_cur, labels, guidance)) / s_cur
                x_next = x + (s_next - s_cur) * d
                if s_next > 0:
                    d_next = (x_next - self._guided(x_next, s_next, labels, guidance)) / s_next
                    x_next = x + (s_next - s_cur) * 0.5 * (d + d_next)
                x = x_next
        return self.from_model_range(x)


def _progress(iterable, show: bool):
    if not show:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc="edm (heun)")
