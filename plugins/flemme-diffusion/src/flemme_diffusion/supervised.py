"""``sdm``: supervised diffusion, the input image is the condition and the target is generated.

Two ways to condition, both without naming a family:

* ``concat`` (default): the condition is concatenated to the noisy target on the channel
  axis (MONAI's ``mode="concat"``);
* ``inject``: a second encoder of the same family reads the condition and its features
  are added to the noise predictor's features at every level, so every decoder stage
  (through the skips) and the bottleneck see it (MONAI's ``context`` argument carries it).

Inference (:meth:`SDM.predict`) averages an ensemble of samples; :meth:`SDM.predict_with_uncertainty`
also returns their standard deviation as a per-pixel uncertainty map.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from flemme_core.architectures.base import Batch, BuildEncoder
from flemme_core.config import choice
from flemme_core.errors import ConfigError, ShapeError

from .ddpm import DDPM, DDPMOptions
from .denoiser import check_sample_request


@dataclasses.dataclass
class SDMOptions(DDPMOptions):
    condition_mode: str = "concat"  # concat | inject
    ensemble: int = 5               # samples averaged by predict
    sample_steps: int = 20
    val_ensemble: int = 1           # cheaper settings for per-epoch validation
    val_steps: int = 10

    def validate(self) -> None:
        super().validate()
        choice(self.condition_mode, ["concat", "inject"], "model.arch_options.condition_mode")
        if self.ensemble < 1 or self.val_ensemble < 1 or self.val_steps < 1:
            raise ConfigError("model.arch_options ensemble, val_ensemble and val_steps must be >= 1")


class SDM(DDPM):
    """Conditional DDPM p(target | image); ``batch['image']`` conditions, ``batch['label']`` is generated."""

    task: ClassVar[str] = "reconstruction"
    Options: ClassVar[type] = SDMOptions

    def data_channels(self) -> int:
        return self.config.out_channels

    def condition_channels(self) -> int:
        return self.config.in_channels

    def network_in_channels(self) -> int:
        concat = self.options.condition_mode == "concat"
        return self.data_channels() + (self.condition_channels() if concat else 0)

    @property
    def condition(self) -> str:
        return "image"

    @property
    def mode(self) -> str:
        return "concat" if self.options.condition_mode == "concat" else "crossattn"

    def _build_extra(self, build_encoder: BuildEncoder) -> None:
        if self.options.condition_mode == "inject":
            enc_cfg = dataclasses.replace(self.config.encoder, norm=self.encoder.config.norm)
            self.cond_encoder = build_encoder(in_channels=self.condition_channels(), image_size=self.latent_size(),
                                              encoder=enc_cfg)

    def condition_features(self, features: list[torch.Tensor], context: torch.Tensor | None) -> list[torch.Tensor]:
        if self.cond_encoder is None:
            return features
        if context is None:  # a bare forward (flemme build): an all-zero condition
            context = features[0].new_zeros(features[0].shape[0], self.condition_channels(), *self.latent_size())
        return [f + g for f, g in zip(features, self.cond_encoder(context))]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        if self.options.condition_mode == "concat" and x.shape[1] == self.data_channels():
            # A caller that passes the condition as ``context`` (not pre-concatenated).
            cond = context if context is not None else x.new_zeros(x.shape[0], self.condition_channels(), *x.shape[2:])
            x, context = torch.cat([x, cond], dim=1), None
        return super().forward(x, timesteps, context)

    # -- training -------------------------------------------------------------------------------
    def diffusion_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        if "label" not in batch:
            raise ShapeError("sdm trains on pairs: batch['image'] (condition) and batch['label'] (target)")
        return self.to_model_range(batch["label"]), self.to_model_range(batch["image"]), self.mode

    @torch.no_grad()
    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        """PSNR/SSIM of a small, few-step ensemble mean; the input's own PSNR is the floor."""
        from .metrics import psnr, ssim

        o = self.options
        lo, hi = (float(v) for v in o.input_range)
        mean, _ = self.predict_with_uncertainty(batch["image"], n=o.val_ensemble, steps=o.val_steps, seed=0)
        target = batch["label"]
        return {"psnr": psnr(mean, target, hi - lo), "ssim": ssim(mean, target, hi - lo),
                "psnr_input": psnr(batch["image"], target, hi - lo),
                "loss": float((mean - target).pow(2).mean())}

    def dataset_metrics(self, held_out: Any, train: Any) -> dict[str, float] | None:
        """Per-image PSNR/SSIM of the ensemble mean (``validation_metrics``) is what sdm reports."""
        return None

    # -- inference -------------------------------------------------------------------------------
    def check_condition(self, condition: Any, n: int | None) -> torch.Tensor:
        """The condition as ``(n, C_in, *image_size)``; a wrong shape is one line."""
        want = (self.condition_channels(), *self.config.image_size)
        if condition is None:
            raise ShapeError(f"sdm generates from an input image; give a condition of shape {want}")
        cond = torch.as_tensor(condition).float()
        if tuple(cond.shape) == want:
            cond = cond[None]
        if cond.dim() != len(want) + 1 or tuple(cond.shape[1:]) != want or (n is not None and len(cond) not in (1, n)):
            raise ShapeError(f"condition has shape {tuple(cond.shape)}, expected {want} or (N, {', '.join(map(str, want))})"
                             f"{f' with N = 1 or {n}' if n else ''}")
        return cond.expand(n, *want) if n is not None and len(cond) == 1 else cond

    def sample(self, n: int, sampler: str | None = None, steps: int | None = None, seed: int | None = 0,
               condition: Any = None, guidance: float | None = None, progress: bool = False) -> torch.Tensor:
        """``n`` targets generated for ``condition`` (one image, or one per sample)."""
        check_sample_request(n, steps, self.options.timesteps)
        sampler, steps = self.resolve_sampler(sampler, steps)
        device = next(self.parameters()).device
        cond = self.to_model_range(self.check_condition(condition, n).to(device))
        return self._denoise_loop(self.noise(n, seed, device), sampler, steps, cond, self.mode, seed, None, progress)

    @torch.no_grad()
    def predict_with_uncertainty(self, x: torch.Tensor, n: int | None = None, steps: int | None = None,
                                 sampler: str | None = None, seed: int | None = 0,
                                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and standard deviation of ``n`` samples per input image."""
        n = n or self.options.ensemble
        cond = self.check_condition(x, None)
        b = len(cond)
        repeated = cond.repeat_interleave(n, dim=0)  # (b * n, ...): sample j of image i at i * n + j
        samples = self.sample(b * n, sampler=sampler, steps=steps, seed=seed, condition=repeated, progress=progress)
        samples = samples.view(b, n, *samples.shape[1:])
        std = samples.std(dim=1, unbiased=False) if n > 1 else torch.zeros_like(samples[:, 0])
        return samples.mean(dim=1), std

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``ensemble`` samples per input (Flemme's SDM inference)."""
        return self.predict_with_uncertainty(x)[0]

    def summary_extra(self) -> dict[str, Any]:
        return {**super().summary_extra(), "condition_mode": self.options.condition_mode,
                "ensemble": self.options.ensemble}
