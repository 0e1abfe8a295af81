"""Scan directions: every direction visits the positions in its own order, and merging
un-flips and un-permutes so that output position p belongs to input position p."""

from __future__ import annotations

import itertools

import pytest
import torch
from flemme_mamba.directions import SCAN_MODES, Directions, scan_orders
from flemme_mamba.scan.reference import selective_scan_ref
from flemme_mamba.ssm import SelectiveScanND


@pytest.mark.parametrize("dims,mode,k", [(2, "single", 1), (2, "single+flip", 2), (2, "cross", 2),
                                         (2, "cross+flip", 4), (3, "single", 1), (3, "cross", 6),
                                         (3, "cross+flip", 12)])
def test_number_of_directions(dims, mode, k):
    assert len(scan_orders(dims, mode)) == k


@pytest.mark.parametrize("mode", SCAN_MODES)
@pytest.mark.parametrize("spatial", [(3, 5), (2, 3, 4)])
def test_identity_scan_merges_back_to_k_times_input(mode, spatial):
    d = Directions(len(spatial), mode)
    x = torch.randn(2, 3, *spatial)
    seqs = d.split(x)
    assert seqs.shape == (2, len(d), 3, x[0, 0].numel())
    assert torch.allclose(d.merge(seqs, spatial), len(d) * x.flatten(2), rtol=1e-6, atol=0)


def cumulative_scan(seqs: torch.Tensor) -> torch.Tensor:
    """The selective scan made a running sum (A = 0, B = C = 1, dt = 1, N = 1)."""
    b, k, c, length = seqs.shape
    ones = torch.ones(b, k, 1, length, dtype=seqs.dtype)
    return selective_scan_ref(seqs.reshape(b, k * c, length), torch.ones(b, k * c, length, dtype=seqs.dtype),
                              torch.zeros(k * c, 1, dtype=seqs.dtype), ones, ones).reshape(b, k, c, length)


@pytest.mark.parametrize("spatial", [(3, 4), (2, 3, 4)])
def test_each_direction_scans_in_its_own_axis_order(spatial):
    """With a running-sum SSM, direction (perm, flip) at position p sums exactly the positions
    that come before p when the axes are visited in order ``perm`` (reversed if flipped)."""
    dims = len(spatial)
    d = Directions(dims, "cross+flip")
    x = torch.rand(1, 1, *spatial, dtype=torch.float64)
    seqs = cumulative_scan(d.split(x))
    positions = list(itertools.product(*[range(s) for s in spatial]))
    for k, (perm, flipped) in enumerate(d.orders):
        single = torch.zeros(len(d), dtype=torch.float64)
        single[k] = 1
        merged = d.merge(seqs * single.view(1, -1, 1, 1), spatial).view(*spatial)

        def key(p, perm=perm):  # the visiting order of this direction
            return tuple(p[a] for a in perm)

        for p in positions:
            before = [q for q in positions if (key(q) >= key(p) if flipped else key(q) <= key(p))]
            expected = sum(x[0, 0][q].item() for q in before)
            assert merged[p].item() == pytest.approx(expected), (perm, flipped, p)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_module_with_identity_ssm_restores_positions(dims, backend):
    """x_proj = 0 makes B = C = 0, D = 1: the scan returns its input, so the mixer equals
    out_proj(norm(K * silu(conv(x))) * silu(z)) computed without any direction."""
    torch.manual_seed(0)
    spatial = (4, 6) if dims == 2 else (2, 3, 4)
    m = SelectiveScanND(dims, 8, d_state=4, scan="cross+flip", backend=backend).eval()
    with torch.no_grad():
        m.x_proj_weight.zero_()
        m.D.fill_(1.0)
    t = torch.randn(2, *spatial, 8)
    x, z = m.in_proj(t).chunk(2, dim=-1)
    xc = torch.nn.functional.silu(m.conv(x.movedim(-1, 1))).movedim(1, -1)
    expected = m.out_proj(m.out_norm(len(m.directions) * xc) * torch.nn.functional.silu(z))
    assert torch.allclose(m(t), expected, atol=1e-5)
