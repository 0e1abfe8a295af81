"""Input/target pairs for reconstruction: simulated k-space under-sampling and denoising.

Both are MONAI dictionary transforms that turn an image-only item (or any 2D preset's
item) into a pair: ``image`` becomes the degraded network input and ``label`` the clean
target (the trainer's ``image``/``label`` convention). Images are first rescaled to
[0, 1] per item (``rescale=True``) so that the magnitude images compared below are the
image itself, whatever normalisation came before.

* :class:`KspaceUndersampled`: Cartesian under-sampling as in fastMRI: the centred 2D
  FFT of the image, a column mask (``random`` or ``equispaced`` lines, acceleration 4,
  8% fully sampled centre by default; MONAI's ``RandomKspaceMask`` /
  ``EquispacedKspaceMask``), and the zero-filled magnitude of the inverse FFT as input.
* :class:`NoisyPair`: additive Gaussian (or Rician) noise of standard deviation ``sigma``.

For evaluation, wrap them in :class:`PerItemSeeded` so that each held-out item always
gets the same mask/noise (seeded from its content), independent of order and workers.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable, Transform

from ..errors import ConfigError


def _rescale(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.amin(), x.amax()
    return (x - lo) / torch.clamp(hi - lo, min=1e-8)


class KspaceUndersampled(Randomizable, MapTransform):
    """``image`` -> zero-filled magnitude of under-sampled k-space; ``label`` <- the fully sampled image."""

    def __init__(self, pattern: str = "random", acceleration: float = 4.0, center_fraction: float = 0.08,
                 rescale: bool = True, keys: tuple[Hashable, ...] = ("image",), target_key: str = "label",
                 mask_key: str | None = None) -> None:
        from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask, RandomKspaceMask

        MapTransform.__init__(self, keys)
        masks = {"random": RandomKspaceMask, "equispaced": EquispacedKspaceMask}
        if pattern not in masks:
            raise ConfigError(f"kspace pattern {pattern!r} is unknown; use 'random' or 'equispaced'")
        if not acceleration > 1 or not 0 < center_fraction < 1 / acceleration:
            raise ConfigError(f"kspace: need acceleration > 1 and 0 < center_fraction < 1/acceleration, got "
                              f"{acceleration} and {center_fraction}")
        self.masker = masks[pattern](center_fractions=[center_fraction], accelerations=[acceleration],
                                     spatial_dims=2, is_complex=True)
        self.rescale, self.target_key, self.mask_key = rescale, target_key, mask_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.masker.set_random_state(state=self.R)  # one stream: the mask draws from our R
        return self

    def randomize(self, data: Any = None) -> None:  # the masker draws its own lines
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data.fft_utils import fftn_centered

        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(np.asarray(d[key]) if not torch.is_tensor(d[key]) else d[key]).float()
            if x.ndim != 3:
                raise ConfigError(f"kspace simulation needs 2D images (C, H, W), got shape {tuple(x.shape)}; "
                                  "use a 2D preset")
            if self.rescale:
                x = _rescale(x)
            inputs, masks = [], []
            for c in range(x.shape[0]):  # one channel at a time (MONAI combines 'coils' otherwise)
                complex_x = torch.stack([x[c : c + 1], torch.zeros_like(x[c : c + 1])], dim=-1)
                kspace = fftn_centered(complex_x, spatial_dims=2, is_complex=True)
                _, zero_filled = self.masker(kspace)
                inputs.append(zero_filled.reshape(x.shape[1:]).float())
                masks.append(self.masker.mask.reshape(1, -1).expand(x.shape[1], -1).float())
            d[self.target_key] = x.clone()
            d[key] = torch.stack(inputs)
            if self.mask_key:
                d[self.mask_key] = torch.stack(masks)
        return d


class NoisyPair(Randomizable, MapTransform):
    """``image`` -> image + noise of std ``sigma`` (Gaussian or Rician); ``label`` <- the clean image."""

    def __init__(self, sigma: float = 0.1, kind: str = "gaussian", rescale: bool = True,
                 keys: tuple[Hashable, ...] = ("image",), target_key: str = "label") -> None:
        MapTransform.__init__(self, keys)
        if kind not in ("gaussian", "rician"):
            raise ConfigError(f"denoise kind {kind!r} is unknown; use 'gaussian' or 'rician'")
        if not sigma > 0:
            raise ConfigError(f"denoise sigma must be > 0, got {sigma}")
        self.sigma, self.kind, self.rescale, self.target_key = float(sigma), kind, rescale, target_key

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(np.asarray(d[key]) if not torch.is_tensor(d[key]) else d[key]).float()
            if self.rescale:
                x = _rescale(x)
            n1 = torch.from_numpy(self.R.normal(0.0, self.sigma, tuple(x.shape)).astype(np.float32))
            if self.kind == "gaussian":
                noisy = x + n1
            else:
                n2 = torch.from_numpy(self.R.normal(0.0, self.sigma, tuple(x.shape)).astype(np.float32))
                noisy = torch.sqrt((x + n1) ** 2 + n2**2)
            d[self.target_key] = x.clone()
            d[key] = noisy
        return d


class PerItemSeeded(Transform):
    """Run a random transform with a seed taken from the item's ``image`` bytes (fixed per item).

    Not ``Randomizable`` on purpose: a ``CacheDataset`` caches its output, so every
    evaluation sees the same under-sampling mask or noise for a given held-out image.
    """

    def __init__(self, transform: Randomizable, seed: int = 0, key: Hashable = "image") -> None:
        self.transform, self.seed, self.key = transform, int(seed), key

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        x = data[self.key]
        raw = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
        self.transform.set_random_state(seed=(zlib.crc32(np.ascontiguousarray(raw).tobytes()) + self.seed) % 2**32)
        return self.transform(data)
