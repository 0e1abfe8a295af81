"""Core losses against naive reference implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flemme_core.errors import ConfigError, PluginError
from flemme_core.losses import build_loss


def naive_dice_loss(logits, labels, eps=1e-5):
    probs = logits.softmax(1)
    onehot = F.one_hot(labels[:, 0].long(), logits.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


@pytest.mark.parametrize("dims", [2, 3])
def test_dice_matches_naive(dims):
    logits = torch.randn(2, 3, *[8] * dims)
    labels = torch.randint(0, 3, (2, 1, *[8] * dims))
    loss = build_loss("dice", out_channels=3, dims=dims)
    assert float(loss(logits, labels)) == pytest.approx(float(naive_dice_loss(logits, labels)), rel=1e-5)


def test_dice_ce_is_dice_plus_ce():
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 1, 8, 8))
    expected = naive_dice_loss(logits, labels) + F.cross_entropy(logits, labels[:, 0])
    assert float(build_loss("dice_ce", 4, 2)(logits, labels)) == pytest.approx(float(expected), rel=1e-5)


def test_binary_losses_use_sigmoid():
    logits = torch.randn(2, 1, 8, 8)
    labels = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert float(build_loss("ce", 1, 2)(logits, labels)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, labels)), rel=1e-6)
    p = logits.sigmoid()
    dice = 1 - (2 * (p * labels).sum((2, 3)) + 1e-5) / (p.sum((2, 3)) + labels.sum((2, 3)) + 1e-5)
    assert float(build_loss("dice", 1, 2)(logits, labels)) == pytest.approx(float(dice.mean()), rel=1e-5)


def test_weighted_combination_and_recon_losses():
    pred, target = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    loss = build_loss([{"name": "mse", "weight": 0.3}, {"name": "l1", "weight": 2.0}], 1, 2)
    expected = 0.3 * F.mse_loss(pred, target) + 2.0 * F.l1_loss(pred, target)
    assert float(loss(pred, target)) == pytest.approx(float(expected), rel=1e-6)
    ssim = build_loss("ssim", 1, 2)
    assert float(ssim(target, target)) == pytest.approx(0.0, abs=1e-5)
    assert float(ssim(pred, target)) > 0.5


def test_loss_errors():
    with pytest.raises(PluginError, match="did you mean 'dice'"):
        build_loss("dise", 2, 2)
    with pytest.raises(ConfigError, match="loss 'mse'.*check its options"):
        build_loss({"name": "mse", "smoothing": 1}, 1, 2)
    with pytest.raises(ConfigError, match="non-negative"):
        build_loss({"name": "mse", "weight": -1}, 1, 2)
