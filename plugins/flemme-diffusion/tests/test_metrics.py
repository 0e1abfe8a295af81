"""The sample metrics separate real data from a collapsed generator (the point of using them)."""

from __future__ import annotations

import torch
from flemme_diffusion.metrics import (
    features,
    memorisation_ratio,
    ms_ssim_pairs,
    precision_recall,
    rbf_bandwidths,
    rbf_mmd2,
    sample_quality,
)


def _blobs(n: int, seed: int) -> torch.Tensor:
    """Images of one bright disk at a random place: a distribution with real spread."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    centres = torch.rand(n, 2, generator=g) * 20 + 6
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    return (d2 < 25).float()[:, None] * 0.8 + 0.1


def test_real_vs_real_beats_a_collapsed_generator():
    train, held_out = _blobs(80, 0), _blobs(80, 1)
    collapsed = (train.mean(0, keepdim=True) + 0.02 * torch.randn(80, 1, 32, 32)).clamp(0, 1)
    real = sample_quality(train, held_out)
    bad = sample_quality(collapsed, held_out)
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert bad["recall"] < 0.05, "a collapsed generator covers none of the data"
    assert abs(real["rbf_mmd2"]) < 0.05 < bad["rbf_mmd2"]
    assert bad["ms_ssim_pairs"] > 0.9 > real["ms_ssim_pairs"]


def test_mmd_is_unbiased_and_linear_kernel_would_be_fooled():
    x, y = torch.randn(200, 8), torch.randn(200, 8)
    bws = rbf_bandwidths(y)
    assert abs(rbf_mmd2(x, y, bws)) < 0.01
    # Same mean, no spread: a mean-only (linear-kernel) MMD sees nothing, the RBF MMD does.
    collapsed = torch.zeros(200, 8) + 0.01 * torch.randn(200, 8)
    assert (collapsed.mean(0) - y.mean(0)).norm() < 0.3
    assert rbf_mmd2(collapsed, y, bws) > 0.1 > 10 * abs(rbf_mmd2(x, y, bws))


def test_precision_recall_and_ms_ssim_edge_cases():
    a = torch.randn(50, 4)
    assert precision_recall(a, a) == (1.0, 1.0)
    far = a + 100.0
    assert precision_recall(far, a) == (0.0, 0.0)
    img = torch.rand(4, 1, 48, 56)
    assert abs(ms_ssim_pairs(img[:1].expand(4, -1, -1, -1).clone()) - 1.0) < 1e-5
    assert features(torch.rand(3, 1, 48, 56)).shape == (3, 24 * 28)
    assert features(torch.rand(3, 1, 16, 16, 16)).shape == (3, 16 ** 3)


def test_memorisation_ratio_tells_a_copier_from_a_generator():
    train, held_out, fresh = _blobs(60, 0), _blobs(20, 1), _blobs(60, 2)
    copies = train[torch.randint(0, 60, (40,), generator=torch.Generator().manual_seed(3))]
    assert memorisation_ratio(copies, train, held_out) < 1e-4  # precision/recall would give 1 / high
    assert memorisation_ratio(held_out, train, held_out) == 1.0
    assert 0.6 < memorisation_ratio(fresh, train, held_out) < 1.6  # new draws of the same distribution
    assert memorisation_ratio(torch.rand(20, 1, 32, 32), train, held_out) > 2.0  # noise: far from everything
