"""``ldm``: diffusion in the latent space of a trained ``ae`` or ``vae`` checkpoint.

The autoencoder is named by path in ``arch_options.autoencoder``. The first build records
its sha256 and config in the model config (hence in every checkpoint); later builds
refuse a file whose content differs, with one line saying which file was expected.
Frozen by default, the autoencoder then lives *outside* the module tree: the ``ldm``
checkpoint holds only the diffusion network and points at the autoencoder file.

Sampling runs MONAI's :class:`~monai.inferers.LatentDiffusionInferer` (noise -> latent ->
the autoencoder's decoder); latents are scaled by ``1 / std`` measured on the first
training batch (stored as a buffer), as in Rombach et al. (2022).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from flemme_core.architectures.base import Batch
from flemme_core.errors import CheckpointError, ConfigError

from .ddpm import DDPM, DDPMOptions


@dataclasses.dataclass
class LDMOptions(DDPMOptions):
    autoencoder: str = ""             # path of the ae/vae checkpoint (safetensors)
    autoencoder_sha256: str = ""      # recorded at the first build; another file is refused
    autoencoder_config: dict = dataclasses.field(default_factory=dict)  # recorded with the hash
    freeze_autoencoder: bool = True
    clip_sample: bool = False         # latents are not bounded to [-1, 1]
    latent_scale: float = 0.0         # 0: 1 / std of the first training batch's latents

    def validate(self) -> None:
        super().validate()
        if not self.autoencoder:
            raise ConfigError("ldm needs model.arch_options.autoencoder: the path of a trained ae or vae checkpoint")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class AutoencoderAdapter:
    """MONAI's stage-1 interface (``encode_stage_2_inputs`` / ``decode_stage_2_outputs``) over a
    flemme autoencoder: a ``vae`` (posterior mean) or an encoder-decoder without skips (``ae``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "encode_latent"):
            return self.model.encode_latent(x)
        return self.model.encoder(x)[-1]

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "decode_latent"):
            return self.model.decode_latent(z)
        return self.model.head(self.model.decoder([z])[-1])


class LDM(DDPM):
    """DDPM over the frozen latent of an autoencoder checkpoint."""

    Options: ClassVar[type] = LDMOptions

    def __init__(self, config, build_encoder):
        super().__init__(config, build_encoder)
        self.register_buffer("latent_scale", torch.tensor(float(self.options.latent_scale)))

    # -- the autoencoder ------------------------------------------------------------------------
    @property
    def autoencoder(self) -> nn.Module:
        if "_autoencoder" not in self.__dict__ and "autoencoder_module" not in self._modules:
            self._load_autoencoder()
        ae = self.__dict__.get("_autoencoder")
        return ae if ae is not None else self._modules["autoencoder_module"]

    def _load_autoencoder(self) -> None:
        from flemme_core.checkpoint import load_model, read_metadata

        o = self.options
        path = Path(o.autoencoder)
        if not path.is_file():
            raise CheckpointError(f"ldm needs its autoencoder checkpoint {str(path)!r}, which does not exist; "
                                  f"restore it or set model.arch_options.autoencoder")
        digest = file_sha256(path)
        if o.autoencoder_sha256 and digest != o.autoencoder_sha256:
            raise CheckpointError(f"{str(path)!r} is not the autoencoder this ldm was trained over (sha256 "
                                  f"{digest[:12]}..., expected {o.autoencoder_sha256[:12]}...); restore that file "
                                  f"or retrain the ldm")
        meta = read_metadata(path)
        if o.autoencoder_config and meta["config"] != o.autoencoder_config:
            raise CheckpointError(f"{str(path)!r} has a different config than the autoencoder this ldm recorded; "
                                  f"restore the original file or retrain the ldm")
        ae = load_model(path)
        if ae.config.arch not in ("ae", "vae") and not hasattr(ae, "encode_latent"):
            raise ConfigError(f"ldm needs an 'ae' or 'vae' checkpoint, {str(path)!r} is a {ae.config.arch!r}")
        if getattr(getattr(ae, "options", None), "skip", False):
            raise ConfigError(f"{str(path)!r} is a U-shaped autoencoder (skip: true): its bottleneck alone cannot "
                              f"be decoded; train an ae without skips or a vae")
        if list(ae.config.image_size) != list(self.config.image_size) or ae.config.in_channels != self.config.in_channels:
            raise ConfigError(f"ldm image_size {self.config.image_size} / in_channels {self.config.in_channels} must "
                              f"match the autoencoder's {ae.config.image_size} / {ae.config.in_channels}")
        # Record what we were built over: it is saved with the config in every checkpoint.
        self.config.arch_options["autoencoder_sha256"] = o.autoencoder_sha256 = digest
        self.config.arch_options["autoencoder_config"] = o.autoencoder_config = meta["config"]
        if o.freeze_autoencoder:
            ae.eval()
            ae.requires_grad_(False)
            self.__dict__["_autoencoder"] = ae  # outside the module tree: not in this checkpoint
        else:
            self._modules["autoencoder_module"] = ae
        with torch.no_grad():
            probe = AutoencoderAdapter(ae).encode_stage_2_inputs(torch.zeros(1, ae.config.in_channels, *ae.config.image_size))
        self.__dict__["_latent_shape"] = list(probe.shape[1:])

    def _apply(self, fn, recurse=True):  # keep the out-of-tree frozen autoencoder on the same device
        ae = self.__dict__.get("_autoencoder")
        if ae is not None:
            ae._apply(fn)
        return super()._apply(fn, recurse)

    def data_channels(self) -> int:
        self.autoencoder  # noqa: B018 - loads it and the latent shape
        return self.__dict__["_latent_shape"][0]

    def latent_size(self) -> list[int]:
        self.autoencoder  # noqa: B018
        return list(self.__dict__["_latent_shape"][1:])

    # -- data ---------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        frozen = self.options.freeze_autoencoder
        with torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
            z = AutoencoderAdapter(self.autoencoder).encode_stage_2_inputs(x)
        if float(self.latent_scale) == 0.0 and self.training:
            self.latent_scale.fill_(1.0 / float(z.detach().float().std().clamp(min=1e-6)))
        return z * self.scale()

    def scale(self) -> float:
        return float(self.latent_scale) if float(self.latent_scale) > 0 else 1.0

    def diffusion_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        z = self.encode(batch["image"])
        return z, self.batch_labels(batch, z.shape[0], z.device), "crossattn"

    # -- sampling ---------------------------------------------------------------------------------
    def make_inferer(self, scheduler) -> tuple[Any, dict[str, Any]]:
        """MONAI's LatentDiffusionInferer: latent noise -> DDPM/DDIM -> the autoencoder's decoder."""
        from monai.inferers import LatentDiffusionInferer

        return (LatentDiffusionInferer(scheduler, scale_factor=self.scale()),
                {"autoencoder_model": AutoencoderAdapter(self.autoencoder)})

    def to_output(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the autoencoder decodes to the data range itself

    def summary_extra(self) -> dict[str, Any]:
        return {**super().summary_extra(), "latent_shape": self.__dict__.get("_latent_shape"),
                "autoencoder": self.options.autoencoder, "autoencoder_sha256": self.options.autoencoder_sha256}
