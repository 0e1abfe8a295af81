"""``vae``: variational autoencoder over any encoder family (no skips), sampling from its prior.

encoder -> bottleneck feature -> (mu, log sigma^2) of a Gaussian latent, either spatial
(``latent_channels`` maps at the bottleneck's resolution: 1×1 convolutions) or a vector
(``vector_dim``: flatten -> Linear) -> reparameterised ``z`` -> the core's :class:`Decoder`
without skips -> head. The KL term is the closed form against N(0, I), weighted and
linearly warmed up; it is normalised by the number of input elements so that
``kl_weight`` means the same at every image size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import nn

from flemme_core import layers
from flemme_core.architectures.base import Architecture, Batch, BuildEncoder
from flemme_core.architectures.decoder import Decoder
from flemme_core.config import ModelConfig
from flemme_core.errors import ConfigError

from .denoiser import check_sample_request


@dataclasses.dataclass
class VAEOptions:
    latent_channels: int = 4          # spatial latent: channels at the bottleneck's resolution
    vector_dim: int | None = None     # set: a vector latent of this size instead
    kl_weight: float = 1.0            # weight of KL / (input elements per sample)
    kl_warmup: int = 0                # training steps over which the KL weight ramps 0 -> kl_weight
    decoder_blocks: int | None = None
    supervised: bool = False          # reconstruct batch['label'] instead of the input

    def validate(self) -> None:
        if self.latent_channels < 1:
            raise ConfigError(f"model.arch_options.latent_channels must be >= 1, got {self.latent_channels}")
        if self.vector_dim is not None and (not isinstance(self.vector_dim, int) or self.vector_dim < 1):
            raise ConfigError(f"model.arch_options.vector_dim must be a positive integer, got {self.vector_dim!r}")
        if self.kl_weight < 0 or self.kl_warmup < 0:
            raise ConfigError("model.arch_options.kl_weight and kl_warmup must be >= 0")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, one value per sample."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class VAE(Architecture):
    """Kingma & Welling (2014); ``forward`` returns the reconstruction of the posterior sample."""

    task: ClassVar[str] = "generation"
    Options: ClassVar[type] = VAEOptions
    default_loss: ClassVar[list[dict[str, Any]]] = [{"name": "mse", "weight": 1.0}]

    def __init__(self, config: ModelConfig, build_encoder: BuildEncoder):
        super().__init__(config, build_encoder)
        enc, o, dims = self.encoder, self.options, config.dims
        width = enc.feature_channels[-1]
        self.bottleneck_size = [s // enc.total_stride for s in config.image_size]
        if o.vector_dim:
            flat = width * math.prod(self.bottleneck_size)
            self.to_stats = nn.Sequential(nn.Flatten(1), nn.Linear(flat, 2 * o.vector_dim))
            self.from_latent = nn.Sequential(nn.Linear(o.vector_dim, flat), nn.Unflatten(1, (width, *self.bottleneck_size)))
        else:
            self.to_stats = layers.conv(dims, width, 2 * o.latent_channels, kernel_size=1)
            self.from_latent = layers.conv(dims, o.latent_channels, width, kernel_size=1)
        self.decoder = Decoder(enc, skip=False, num_blocks=o.decoder_blocks)
        self.head = layers.head(dims, self.decoder.out_channels, self.output_channels())
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def output_channels(self) -> int:
        return self.config.out_channels if self.options.supervised else self.config.in_channels

    @property
    def latent_shape(self) -> list[int]:
        o = self.options
        return [o.vector_dim] if o.vector_dim else [o.latent_channels, *self.bottleneck_size]

    # -- encode / decode (also what ldm uses) ------------------------------------------------
    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.to_stats(self.encoder(x)[-1])
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: the deterministic code ``ldm`` diffuses in."""
        return self.encode_stats(x)[0]

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder([self.from_latent(z)])[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode_stats(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode_latent(z)

    # -- training ------------------------------------------------------------------------------
    def kl_scale(self) -> float:
        """Current KL weight: linear warm-up over ``kl_warmup`` steps."""
        o = self.options
        if not o.kl_warmup:
            return o.kl_weight
        return o.kl_weight * min(1.0, float(self.steps_seen) / o.kl_warmup)

    def training_loss(self, batch: Batch, criterion: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        x, target = batch["image"], (batch["label"] if self.options.supervised else batch["image"])
        mu, logvar = self.encode_stats(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = criterion(self.decode_latent(z), target)
        kl = gaussian_kl(mu, logvar).mean() / x[0].numel()
        weight = self.kl_scale()
        if self.training:
            self.steps_seen += 1
        return recon + weight * kl, {"recon": float(recon.detach()), "kl": float(kl.detach()), "kl_weight": weight}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the posterior mean."""
        return self.decode_latent(self.encode_latent(x))

    @torch.no_grad()
    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        from .metrics import psnr, ssim

        was_training = self.training
        self.eval()
        x = batch["image"]
        target = batch["label"] if self.options.supervised else x
        mu, logvar = self.encode_stats(x)
        recon = self.decode_latent(mu)
        self.train(was_training)
        return {"psnr": psnr(recon, target), "ssim": ssim(recon, target),
                "kl": float(gaussian_kl(mu, logvar).mean() / x[0].numel()),
                "loss": float((recon - target).pow(2).mean())}

    def dataset_metrics(self, held_out: Any, train: Any) -> dict[str, float] | None:
        """Prior samples vs the held-out images (with both controls), plus reconstruction PSNR/SSIM."""
        from .evaluate import evaluate_generator, stack_images
        from .metrics import psnr, ssim

        report = evaluate_generator(self, held_out, train)
        x = stack_images(held_out)
        target = stack_images(held_out, "label") if self.options.supervised else x
        recon = torch.cat([self.predict(x[i:i + 32]) for i in range(0, len(x), 32)])
        report.update({"recon/psnr": psnr(recon, target), "recon/ssim": ssim(recon, target)})
        return report

    # -- generation ------------------------------------------------------------------------------
    def sample(self, n: int, sampler: str | None = None, steps: int | None = None, seed: int | None = 0,
               condition: Any = None, guidance: float | None = None, progress: bool = False) -> torch.Tensor:
        """Decode ``n`` draws from the N(0, I) prior (sample ``i`` from seed ``seed + i``)."""
        check_sample_request(n, None, None)
        if sampler is not None or steps is not None:
            raise ConfigError("a vae samples its prior in one decoder pass; drop --sampler and --steps")
        if condition is not None:
            raise ConfigError("a vae is unconditional; sample it without a condition")
        device = next(self.parameters()).device
        if seed is None:
            z = torch.randn(n, *self.latent_shape, device=device)
        else:
            z = torch.stack([torch.randn(*self.latent_shape, generator=torch.Generator().manual_seed(seed + i))
                             for i in range(n)]).to(device)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self.decode_latent(z)
        self.train(was_training)
        return out

    def summary_extra(self) -> dict[str, Any]:
        return {"latent_shape": self.latent_shape}
