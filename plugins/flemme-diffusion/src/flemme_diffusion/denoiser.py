"""The noise-predicting U-Net every diffusion architecture shares, from any encoder family.

encoder (built with ``context_dim``) -> the core's :class:`Decoder` with skips -> 1×1 head,
the context vector (time, optionally a class) injected into every stage of both. Its
call signature is MONAI's ``network(x, timesteps, context=None)`` so MONAI's schedulers
and inferers drive it unchanged. No family is named here: the blocks come from the
encoder's own :class:`~flemme_core.encoder.BlockFamily`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from flemme_core import layers
from flemme_core.architectures.base import Architecture, Batch, BuildEncoder
from flemme_core.architectures.decoder import Decoder
from flemme_core.config import ModelConfig, choice
from flemme_core.errors import ConfigError, ShapeError

from .ema import EMA
from .embedding import ContextEmbedding


@dataclasses.dataclass
class DenoiserOptions:
    context_dim: int = 128          # width of the context vector every block receives
    freq_dim: int = 64              # sinusoidal features of the timestep
    num_classes: int = 0            # > 0: class-conditional (labels from batch[class_key])
    class_key: str = "label"
    cond_drop: float = 0.1          # classifier-free guidance: label dropped with this probability
    guidance: float = 1.0           # default guidance scale at sampling (1 = plain conditional)
    decoder_blocks: int | None = None
    ema: float = 0.0                # EMA decay of the weights used for sampling (0: off, e.g. 0.999)
    input_range: list = dataclasses.field(default_factory=lambda: [0.0, 1.0])  # data range -> [-1, 1]
    batch_norm_to: str = "group"    # families that default to BatchNorm use this (noise levels mix)

    def validate(self) -> None:
        if self.context_dim < 1 or self.freq_dim < 2:
            raise ConfigError("model.arch_options.context_dim and freq_dim must be positive (freq_dim >= 2)")
        if self.num_classes < 0:
            raise ConfigError(f"model.arch_options.num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"model.arch_options.cond_drop must be in [0, 1), got {self.cond_drop}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"model.arch_options.ema must be a decay in [0, 1), got {self.ema}")
        lo_hi = list(self.input_range)
        if len(lo_hi) != 2 or not float(lo_hi[0]) < float(lo_hi[1]):
            raise ConfigError(f"model.arch_options.input_range must be [low, high] with low < high, got {lo_hi}")
        choice(self.batch_norm_to, ["batch", "group", "instance", "layer"], "model.arch_options.batch_norm_to")


class DenoiserArchitecture(Architecture):
    """Shared body of ddpm / edm / ldm / sdm: the context-conditioned U-Net and its plumbing.

    Subclasses set :attr:`condition` ("none", "class" or "image") through their options,
    :meth:`data_channels` (what is generated) and :meth:`network_in_channels`.
    """

    task: ClassVar[str] = "generation"
    default_loss: ClassVar[list[dict[str, Any]]] = [{"name": "mse", "weight": 1.0}]
    Options: ClassVar[type] = DenoiserOptions

    def __init__(self, config: ModelConfig, build_encoder: BuildEncoder):
        super().__init__(config, build_encoder)
        opts = self.options
        self.encoder = self._maybe_replace_batch_norm(build_encoder)
        self.embed = ContextEmbedding(opts.context_dim, opts.freq_dim, opts.num_classes)
        self.decoder = Decoder(self.encoder, skip=True, num_blocks=opts.decoder_blocks)
        self.head = layers.head(config.dims, self.decoder.out_channels, self.data_channels())
        self.cond_encoder: nn.Module | None = None
        self._build_extra(build_encoder)
        self.ema = EMA(self.trainable_named(), opts.ema) if opts.ema > 0 else None

    # -- construction ------------------------------------------------------------------
    def data_channels(self) -> int:
        """Channels of what is generated (and of the noise)."""
        return self.config.in_channels

    def network_in_channels(self) -> int:
        return self.data_channels()

    def latent_size(self) -> list[int]:
        """Spatial size the U-Net runs at (the image size, or a latent size for ``ldm``)."""
        return list(self.config.image_size)

    def encoder_overrides(self) -> dict[str, Any]:
        return {"context_dim": self.options.context_dim, "in_channels": self.network_in_channels(),
                "image_size": self.latent_size()}

    def _maybe_replace_batch_norm(self, build_encoder: BuildEncoder) -> nn.Module:
        """BatchNorm averages statistics over all noise levels and drifts between train and
        sampling; a family whose *default* is batch norm gets ``batch_norm_to`` instead."""
        enc = self.encoder
        want = self.options.batch_norm_to
        if enc.config.norm == "batch" and self.config.encoder.norm is None and want != "batch":
            enc = build_encoder(**self.encoder_overrides(),
                                encoder=dataclasses.replace(self.config.encoder, norm=want))
        return enc

    def _build_extra(self, build_encoder: BuildEncoder) -> None:
        """Hook for subclasses (a condition encoder); called before the EMA snapshot."""

    def trainable_named(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith("ema.")]

    @property
    def condition(self) -> str:
        return "class" if self.options.num_classes else "none"

    # -- the network (MONAI's signature) -------------------------------------------------
    def default_timesteps(self, batch: int, device: torch.device) -> torch.Tensor:
        """The time a bare ``model(x)`` uses (``flemme build``'s dummy forward)."""
        return torch.zeros(batch, device=device)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Predict from a noisy ``x`` at ``timesteps``; ``context`` is class labels or an image condition."""
        if timesteps is None:
            timesteps = self.default_timesteps(x.shape[0], x.device)
        labels = context if self.condition == "class" else None
        c = self.embed(timesteps, x.shape[0], labels)
        features = self.encoder(x, c)
        features = self.condition_features(features, context)
        return self.head(self.decoder(features, c)[-1])

    def condition_features(self, features: list[torch.Tensor], context: torch.Tensor | None) -> list[torch.Tensor]:
        """Per-level image conditioning (``sdm`` with ``condition_mode: inject``); identity here."""
        return features

    # -- data range ---------------------------------------------------------------------
    def to_model_range(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = (float(v) for v in self.options.input_range)
        return (x - lo) / (hi - lo) * 2.0 - 1.0

    def from_model_range(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = (float(v) for v in self.options.input_range)
        return (x + 1.0) / 2.0 * (hi - lo) + lo

    # -- training helpers ---------------------------------------------------------------
    def before_step(self) -> None:
        """Called at the top of every training loss: advance the EMA past the last optimiser step."""
        if self.ema is not None and self.training:
            self.ema.update()

    def batch_labels(self, batch: Batch, n: int, device: torch.device) -> torch.Tensor | None:
        """Class labels of a batch with classifier-free-guidance dropout (-1 = no class)."""
        if self.condition != "class":
            return None
        key = self.options.class_key
        if key not in batch:
            raise ShapeError(f"a class-conditional model needs batch[{key!r}] with one class index per sample")
        labels = torch.as_tensor(batch[key], device=device).reshape(n, -1)[:, 0].float()
        if self.training and self.options.cond_drop > 0:
            drop = torch.rand(n, device=device) < self.options.cond_drop
            labels = torch.where(drop, torch.full_like(labels, -1.0), labels)
        return labels

    @contextlib.contextmanager
    def sampling_weights(self) -> Iterator[None]:
        """Eval mode and the EMA weights (if any) for the duration of a sampling call."""
        was_training = self.training
        self.eval()
        ctx = self.ema.swapped() if self.ema is not None else contextlib.nullcontext()
        try:
            with ctx, torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def noise(self, n: int, seed: int | None, device: torch.device) -> torch.Tensor:
        """Initial noise; sample ``i`` draws from ``seed + i`` so it does not depend on ``n``."""
        shape = (self.data_channels(), *self.latent_size())
        if seed is None:
            return torch.randn(n, *shape, device=device)
        gens = [torch.Generator().manual_seed(int(seed) + i) for i in range(n)]
        return torch.stack([torch.randn(*shape, generator=g) for g in gens]).to(device)

    def class_condition(self, condition: Any, n: int, device: torch.device) -> torch.Tensor | None:
        """Validate a class condition for sampling: an int or ``n`` class indices."""
        if condition is None:
            return None
        if self.condition != "class":
            raise ShapeError("this model is unconditional (num_classes: 0); sample it without a condition")
        labels = torch.as_tensor(condition, device=device).float()
        if labels.dim() == 0:
            labels = labels.expand(n)
        labels = labels.reshape(-1) if labels.dim() > 1 and labels.shape[-1] == 1 else labels
        if labels.shape != (n,):
            raise ShapeError(f"class condition must be one index or {n} indices, got shape {tuple(labels.shape)}")
        if ((labels < 0) | (labels >= self.options.num_classes)).any():
            raise ShapeError(f"class condition out of range; this model knows classes 0..{self.options.num_classes - 1}")
        return labels

    def dataset_metrics(self, held_out: Any, train: Any) -> dict[str, float] | None:
        """``flemme eval``: sample quality vs the held-out images, with both controls."""
        from .evaluate import evaluate_generator

        return evaluate_generator(self, held_out, train)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.randn(batch_size, self.network_in_channels(), *self.latent_size())

    def summary_extra(self) -> dict[str, Any]:
        return {"generates": [self.data_channels(), *self.config.image_size],
                "condition": self.condition, "ema": self.options.ema}


def check_sample_request(n: int, steps: int | None, max_steps: int | None) -> None:
    """One-line errors for impossible sampling requests (before anything is computed)."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of samples must be at least 1, got {n}")
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"step count must be at least 1, got {steps}")
        if max_steps is not None and steps > max_steps:
            raise ConfigError(f"{steps} sampling steps exceed the {max_steps} timesteps this model was trained "
                              f"with; use --steps {max_steps} or fewer")
