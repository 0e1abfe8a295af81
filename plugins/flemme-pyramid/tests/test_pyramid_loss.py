"""The pyramid loss against hand-computed values, level weights, and target resizing."""

from __future__ import annotations

import pytest
import torch
from flemme_pyramid.loss import PyramidLoss, level_weights, resize_target
from torch import nn

from flemme_core.errors import ConfigError
from flemme_core.losses import build_loss


def test_equal_weights_are_the_mean():
    assert level_weights("equal", 4) == [0.25] * 4
    assert level_weights("equal", 1) == [1.0]


def test_halving_weights_follow_nnunet():
    # nnU-Net: 1/2^i, the coarsest dropped, normalised: [1, .5, .25, 0] / 1.75
    assert level_weights("halving", 4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert level_weights("halving", 2) == pytest.approx([1.0, 0.0])
    assert level_weights("halving", 1) == [1.0]  # a single level is never dropped
    with pytest.raises(ConfigError, match="level_weights"):
        level_weights("exp", 3)


def _block_mean(t: torch.Tensor, f: int) -> torch.Tensor:
    """Independent reference for area resizing: explicit loops over f×f blocks."""
    b, c, h, w = t.shape
    out = torch.zeros(b, c, h // f, w // f)
    for i in range(h // f):
        for j in range(w // f):
            out[:, :, i, j] = t[:, :, i * f:(i + 1) * f, j * f:(j + 1) * f].mean(dim=(2, 3))
    return out


def test_image_loss_equals_hand_computed_value():
    torch.manual_seed(0)
    y = torch.rand(1, 1, 4, 4)
    fused, h1, h2 = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 2, 2), torch.rand(1, 1, 1, 1)
    mse = lambda a, b: ((a - b) ** 2).mean()
    loss = PyramidLoss(nn.MSELoss(), level_weights="equal", pyramid_weight=0.5, target="image")
    expected = mse(fused, y) + 0.5 * (mse(h1, _block_mean(y, 2)) + mse(h2, y.mean().view(1, 1, 1, 1))) / 2
    torch.testing.assert_close(loss([fused, h1, h2], y), expected)
    halving = PyramidLoss(nn.MSELoss(), level_weights="halving", target="image")
    torch.testing.assert_close(halving([fused, h1, h2], y), mse(fused, y) + mse(h1, _block_mean(y, 2)))
    assert set(halving.last) == {"loss", "loss_fused", "loss_level1_2x2", "loss_level2_1x1"}


def test_weighted_losses_match_flemmes_formula():
    """Σ_k w_k [L_k(fused, y) + mean_i L_k(h_i, y_i)] with two configured losses."""
    torch.manual_seed(1)
    y = torch.randint(0, 3, (2, 1, 8, 8))
    outs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    spec = [{"name": "dice", "weight": 0.3}, {"name": "ce", "weight": 2.0}]
    loss = PyramidLoss(build_loss(spec, 3, 2), target="labels")(outs, y)
    dice, ce = build_loss("dice", 3, 2), build_loss("ce", 3, 2)
    expected = 0.0
    for w, term in [(0.3, dice), (2.0, ce)]:
        levels = [term(o, resize_target(y, o.shape[2:], "labels", "majority", 3)) for o in outs[1:]]
        expected = expected + w * (term(outs[0], y) + sum(levels) / len(levels))
    torch.testing.assert_close(loss, expected)


def test_single_output_passes_through():
    pred, y = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)
    torch.testing.assert_close(PyramidLoss(nn.MSELoss(), target="image")(pred, y), nn.MSELoss()(pred, y))


def test_majority_resizing_of_class_indices():
    y = torch.tensor([[0, 0, 1, 1],
                      [0, 2, 1, 2],
                      [2, 2, 0, 0],
                      [2, 1, 0, 1]]).view(1, 1, 4, 4)
    assert resize_target(y, [2, 2], "labels", "majority", 3).view(2, 2).tolist() == [[0, 1], [2, 0]]
    # nearest keeps one voxel per block (the top-left one)
    assert resize_target(y, [2, 2], "labels", "nearest", 3).view(2, 2).tolist() == [[0, 1], [2, 0]]
    # a 3-voxel object in one block survives majority but not nearest sampling
    z = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    z[0, 0, 0, 1] = z[0, 0, 1, 0] = z[0, 0, 1, 1] = 1
    assert resize_target(z, [2, 2], "labels", "majority", 2)[0, 0, 0, 0] == 1
    assert resize_target(z, [2, 2], "labels", "nearest", 2)[0, 0, 0, 0] == 0


def test_binary_and_one_hot_targets_keep_their_form():
    z = torch.zeros(1, 1, 4, 4)
    z[0, 0, :2, :2] = torch.tensor([[1, 1], [1, 0]])   # 3/4 -> foreground
    z[0, 0, :2, 2:] = torch.tensor([[1, 0], [1, 0]])   # a tie -> background
    assert resize_target(z, [2, 2], "labels", "majority", 1).view(2, 2).tolist() == [[1, 0], [0, 0]]
    y = torch.randint(0, 3, (2, 1, 8, 8))
    one_hot = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1)
    small = resize_target(one_hot, [4, 4], "labels", "majority", 3)
    expected = resize_target(y, [4, 4], "labels", "majority", 3)
    assert small.shape == (2, 3, 4, 4) and torch.equal(small.argmax(1, keepdim=True), expected)
    assert torch.all(small.sum(1) == 1)


def test_3d_image_target_is_area_averaged():
    y = torch.arange(8.0).view(1, 1, 2, 2, 2)
    assert resize_target(y, [1, 1, 1], "image", "area", 1).item() == pytest.approx(3.5)


def test_pyramid_loss_factory_rejects_itself():
    with pytest.raises(ConfigError, match="cannot wrap itself"):
        build_loss({"name": "pyramid", "losses": ["pyramid"]}, 2, 2)
    with pytest.raises(ConfigError, match="target_resize"):
        build_loss({"name": "pyramid", "losses": ["mse"], "target": "image", "target_resize": "majority"}, 1, 2)


def test_per_loss_log_sums_each_configured_loss_over_the_pyramid():
    torch.manual_seed(2)
    y = torch.rand(1, 1, 4, 4)
    outs = [torch.rand(1, 1, 4, 4), torch.rand(1, 1, 2, 2)]
    criterion = build_loss([{"name": "mse", "weight": 2.0}, {"name": "l1"}], 1, 2)
    total = PyramidLoss(criterion, target="image", pyramid_weight=0.5)(outs, y)
    y2 = _block_mean(y, 2)
    mse = ((outs[0] - y) ** 2).mean() + 0.5 * ((outs[1] - y2) ** 2).mean()
    l1 = (outs[0] - y).abs().mean() + 0.5 * (outs[1] - y2).abs().mean()
    assert criterion.last == pytest.approx({"mse": float(mse), "l1": float(l1)})
    assert float(total) == pytest.approx(2 * float(mse) + float(l1))
