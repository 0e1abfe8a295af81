"""Each pixel-difference convolution against a naive loop written from the paper's formulas."""

from __future__ import annotations

import itertools

import pytest
import torch
from flemme_pidinet.network import PDCConv
from flemme_pidinet.pdc import pdc_conv2d, pdc_kernel

# 3×3 offsets in row-major order (flat index i = 3 * (dy + 1) + (dx + 1)).
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
CLOCKWISE = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]


def pixel(x, c, y, xx):
    """x[c, y, xx] with zeros outside the image (the networks' zero padding)."""
    h, w = x.shape[1:]
    return float(x[c, y, xx]) if 0 <= y < h and 0 <= xx < w else 0.0


def naive(op, x, weight, groups):
    """y[o, p] = Σ_in Σ_neighbours w · (pixel difference) — one output pixel at a time."""
    cin, h, w = x.shape
    cout = weight.shape[0]
    per_group_in, per_group_out = cin // groups, cout // groups
    y = torch.zeros(cout, h, w, dtype=torch.float64)
    for o, r, s in itertools.product(range(cout), range(h), range(w)):
        g = o // per_group_out
        total = 0.0
        for k in range(per_group_in):
            c = g * per_group_in + k
            wt = weight[o, k].flatten().double()
            centre = pixel(x, c, r, s)
            if op == "cv":     # Σ_i w_i x_i
                total += sum(wt[i] * pixel(x, c, r + dy, s + dx) for i, (dy, dx) in enumerate(OFFSETS))
            elif op == "cd":   # Σ_i w_i (x_i − x_c)
                total += sum(wt[i] * (pixel(x, c, r + dy, s + dx) - centre) for i, (dy, dx) in enumerate(OFFSETS))
            elif op == "ad":   # Σ_i w_i (x_i − x_{i'}), i' the clockwise neighbour of i on the ring
                for j, (dy, dx) in enumerate(CLOCKWISE):
                    ny, nx = CLOCKWISE[(j + 1) % 8]
                    i = OFFSETS.index((dy, dx))
                    total += wt[i] * (pixel(x, c, r + dy, s + dx) - pixel(x, c, r + ny, s + nx))
            elif op == "rd":   # Σ_k w_k (x at distance 2 − x at distance 1) along direction k
                directions = [d for d in OFFSETS if d != (0, 0)]
                for k_dir, (dy, dx) in enumerate(directions):
                    total += wt[k_dir + 1] * (pixel(x, c, r + 2 * dy, s + 2 * dx) - pixel(x, c, r + dy, s + dx))
        y[o, r, s] = total
    return y


@pytest.mark.parametrize("op", ["cv", "cd", "ad", "rd"])
@pytest.mark.parametrize("groups", [1, 3])
def test_pdc_matches_the_explicit_pixel_difference_sum(op, groups):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 7)
    weight = torch.randn(6, 3 // groups, 3, 3)
    ours = pdc_conv2d(x, weight, op, groups=groups)[0].double()
    ref = naive(op, x[0], weight, groups)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("op", ["cv", "cd", "ad", "rd"])
def test_converted_layer_is_the_same_function(op):
    """The convert trick: the plain kernel computed once gives the PDC's output."""
    torch.manual_seed(1)
    layer = PDCConv(op, 4, 4, groups=4)
    plain = PDCConv(op, 4, 4, groups=4, converted=True)
    with torch.no_grad():
        plain.weight.copy_(plain.convert_weight(layer.weight))
    x = torch.randn(2, 4, 9, 9)
    assert plain.weight.shape[-1] == (5 if op == "rd" else 3)
    assert torch.allclose(layer(x), plain(x), atol=1e-5)


def test_pdc_weights_get_gradients_through_the_kernel_transform():
    weight = torch.randn(2, 1, 3, 3, requires_grad=True)
    pdc_conv2d(torch.randn(1, 2, 5, 5), weight, "ad", groups=2).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    # the angular difference never reads the centre weight, the radial one never reads position 0
    assert torch.all(weight.grad[:, :, 1, 1] == 0)


def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match="unknown pixel-difference convolution 'xd'"):
        pdc_kernel("xd", torch.zeros(1, 1, 3, 3))
