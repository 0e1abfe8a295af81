"""Sample-quality metrics that a collapsed generator cannot game.

* **Kernel MMD² with Gaussian (RBF) kernels** at several bandwidths (unbiased estimator,
  Gretton et al., 2012). MONAI's ``MMDMetric`` uses a linear kernel, which only compares
  means: the training mean plus a little noise scores perfectly there. Bandwidths are
  the median pairwise distance of the *reference* set times {0.5, 1, 2}, so every
  candidate is measured with the same kernels; the reported value is the mean over them.
* **k-NN precision and recall** (Kynkäänniemi et al., 2019, k = 3): precision is the
  fraction of samples inside the union of the real k-NN balls, recall the fraction of
  real images inside the union of the samples' k-NN balls. A collapsed model has
  precision near 1 but recall near 0.
* **MS-SSIM among samples** (mean over pairs; lower = more diverse), to be read next to
  the same number among real images.
* **Memorisation ratio**: the median distance from a sample to its nearest *training*
  image over the same median for the held-out images. Precision and recall cannot tell a
  generator from a copier (the training images score 1 / 1); near 1 the samples are as
  far from the training set as new real images are, near 0 they are copies of it.

Feature space: there is no pretrained medical image network offline (and an ImageNet
Inception is a poor judge of MR slices anyway), so features are **low-resolution
pixels**: average-pooled so the longest side is at most 32, flattened. Pooling removes
pixel noise, which otherwise dominates Euclidean distances, and keeps the anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def features(x: torch.Tensor, max_side: int = 32) -> torch.Tensor:
    """Low-resolution pixel features ``(N, D)`` of images ``(N, C, *spatial)``."""
    spatial = x.shape[2:]
    factor = max(1, -(-max(spatial) // max_side))
    size = [max(1, s // factor) for s in spatial]
    pool = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
    return pool(x.float(), size).flatten(1)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double()).pow(2)


def rbf_bandwidths(reference: torch.Tensor, scales: Sequence[float] = (0.5, 1.0, 2.0)) -> list[float]:
    """Median pairwise distance of the reference features times ``scales``."""
    d = torch.cdist(reference.double(), reference.double())
    off = d[~torch.eye(len(d), dtype=torch.bool)]
    median = float(off.median()) if off.numel() else 1.0
    return [max(median, 1e-12) * s for s in scales]


def rbf_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float]) -> float:
    """Unbiased MMD² between feature sets ``x`` (samples) and ``y`` (reference), averaged over kernels."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError("MMD needs at least 2 samples on each side")
    dxx, dyy, dxy = _sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y)
    total = 0.0
    for bw in bandwidths:
        g = 1.0 / (2.0 * bw * bw)
        kxx, kyy, kxy = (-g * dxx).exp(), (-g * dyy).exp(), (-g * dxy).exp()
        n, m = len(x), len(y)
        term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        total += float(term_x + term_y - 2.0 * kxy.mean())
    return total / len(bandwidths)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x.double(), x.double())
    d.fill_diagonal_(float("inf"))
    k = min(k, len(x) - 1)
    return d.topk(k, dim=1, largest=False).values[:, -1]


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN balls."""
    if len(fake) < 2 or len(real) < 2:
        raise ValueError("precision/recall need at least 2 samples on each side")
    d = torch.cdist(fake.double(), real.double())  # (F, R)
    precision = (d <= _knn_radii(real, k)[None, :]).any(dim=1).double().mean()
    recall = (d <= _knn_radii(fake, k)[:, None]).any(dim=0).double().mean()
    return float(precision), float(recall)


def _ms_ssim_settings(spatial: Sequence[int]) -> tuple[int, tuple[float, ...]]:
    """Largest scale count and kernel MONAI's MS-SSIM accepts for this image size."""
    for scales in (5, 4, 3, 2):
        div = max(1, scales - 1) ** 2
        for kernel in (11, 7, 5, 3):
            if all(s // div > kernel - 1 for s in spatial):
                w = MS_SSIM_WEIGHTS[:scales]
                return kernel, tuple(v / sum(w) for v in w)
    return 3, (1.0,)


def ms_ssim_pairs(x: torch.Tensor, data_range: float = 1.0, max_pairs: int = 200, seed: int = 0) -> float:
    """Mean MS-SSIM over (up to ``max_pairs``) random distinct pairs: 1 = all identical."""
    from monai.metrics.regression import compute_ms_ssim

    n = len(x)
    if n < 2:
        raise ValueError("diversity needs at least 2 images")
    pairs = torch.combinations(torch.arange(n), 2)
    if len(pairs) > max_pairs:
        pairs = pairs[torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:max_pairs]]
    kernel, weights = _ms_ssim_settings(x.shape[2:])
    a, b = x[pairs[:, 0]].float(), x[pairs[:, 1]].float()
    values = compute_ms_ssim(a, b, spatial_dims=x.dim() - 2, data_range=data_range, kernel_size=kernel,
                             weights=weights)
    return float(values.mean())


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean PSNR (dB) over the batch (MONAI's PSNRMetric)."""
    from monai.metrics import PSNRMetric

    return float(PSNRMetric(max_val=data_range, reduction="mean")(pred.float(), target.float()).mean())


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM over the batch (MONAI's SSIMMetric, 7-pixel kernel for small images)."""
    from monai.metrics import SSIMMetric

    win = 7 if min(pred.shape[2:]) > 7 else 3
    metric = SSIMMetric(spatial_dims=pred.dim() - 2, data_range=data_range, win_size=win)
    return float(metric(pred.float(), target.float()).mean())


def sample_quality(samples: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0,
                   bandwidths: Sequence[float] | None = None, k: int = 3) -> dict[str, float]:
    """All sample metrics of ``samples`` against ``reference`` images (same shape, same range)."""
    fs, fr = features(samples), features(reference)
    bws = list(bandwidths) if bandwidths is not None else rbf_bandwidths(fr)
    precision, recall = precision_recall(fs, fr, k)
    return {"precision": precision, "recall": recall, "rbf_mmd2": rbf_mmd2(fs, fr, bws),
            "ms_ssim_pairs": ms_ssim_pairs(samples, data_range)}


def nearest_training(x: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to, and index of, each image's nearest training image in the metrics' feature space."""
    nearest = _sq_dists(features(x), features(train)).min(1)
    return nearest.values.sqrt(), nearest.indices


def memorisation_ratio(samples: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor) -> float:
    """Median nearest-training-image distance of ``samples`` over that of ``held_out`` (features space)."""
    dist_samples, _ = nearest_training(samples, train)
    dist_held_out, _ = nearest_training(held_out, train)
    return float(dist_samples.median() / dist_held_out.median().clamp(min=1e-12))
