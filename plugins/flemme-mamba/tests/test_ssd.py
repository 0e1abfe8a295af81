"""Mamba-2 (SSD): the chunked scan against the sequential float64 recurrence, and the
``ssm: mamba2`` variant of the family under the core architectures."""

from __future__ import annotations

import pytest
import torch
from flemme_mamba.scan.reference import selective_scan_ref
from flemme_mamba.ssd import segment_sums, ssd_scan

from flemme_core import build_model, load_model, save_model
from flemme_core.errors import ConfigError


def ssd_inputs(b=2, g=2, m=3, length=100, p=4, n=5, regime="mamba", dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)
    if regime == "mamba":  # softplus of Mamba's dt init range plus a projection
        dt = torch.nn.functional.softplus(0.3 * rnd(b, g, m, length) - 4.0)
    else:  # large steps, up to 10: every decay underflows to 0
        dt = 10 * torch.rand(b, g, m, length, generator=gen, dtype=dtype)
    A = -torch.empty(g, m, dtype=dtype).uniform_(1, 16, generator=gen)
    return {"x": rnd(b, g, m, length, p), "dt": dt, "A": A, "B": rnd(b, g, length, n), "C": rnd(b, g, length, n),
            "D": rnd(g, m)}


def as_selective_scan(x, dt, A, B, C, D):
    """The same SSM in Mamba-1's layout: A replicated over the head's channels and states."""
    b, g, m, length, p = x.shape
    n = B.shape[-1]
    u = x.permute(0, 1, 2, 4, 3).reshape(b, g * m * p, length)
    delta = dt[:, :, :, None, :].expand(b, g, m, p, length).reshape(b, g * m * p, length)
    A_full = A[:, :, None, None].expand(g, m, p, n).reshape(g * m * p, n)
    D_full = D[:, :, None].expand(g, m, p).reshape(-1)
    y = selective_scan_ref(u, delta, A_full, B.transpose(-1, -2), C.transpose(-1, -2), D_full)
    return y.reshape(b, g, m, p, length).permute(0, 1, 2, 4, 3)


def test_segment_sums_are_the_causal_partial_sums():
    a = torch.randn(3, 6, dtype=torch.float64)
    s = segment_sums(a)
    for i in range(6):
        for j in range(6):
            expected = a[:, j + 1 : i + 1].sum(-1) if i >= j else torch.full((3,), float("-inf"), dtype=a.dtype)
            torch.testing.assert_close(s[:, i, j], expected)


@pytest.mark.parametrize("regime", ["mamba", "large"])
@pytest.mark.parametrize(("length", "chunk"), [(100, 32), (64, 64), (7, 16)])
def test_chunked_scan_matches_the_float64_recurrence(regime, length, chunk):
    """fp32 SSD vs the float64 sequential scan: outputs and every gradient within 1e-5 relative."""
    ref_in = {k: v.requires_grad_() for k, v in ssd_inputs(length=length, regime=regime).items()}
    ours_in = {k: v.detach().float().requires_grad_() for k, v in ref_in.items()}
    ref = as_selective_scan(**ref_in)
    ours = ssd_scan(**ours_in, chunk=chunk)
    scale = ref.abs().max()
    assert (ours.double() - ref).abs().max() / scale < 1e-5
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_grads = torch.autograd.grad((ref * weight).sum(), list(ref_in.values()))
    our_grads = torch.autograd.grad((ours * weight.float()).sum(), list(ours_in.values()))
    for name, r, o in zip(ref_in, ref_grads, our_grads):
        err = (o.double() - r).abs().max() / r.abs().max().clamp_min(1e-12)
        assert err < 1e-5, (name, float(err))


def test_gradcheck_float64():
    inputs = {k: v.requires_grad_() for k, v in ssd_inputs(b=1, g=1, m=2, length=9, p=2, n=3).items()}
    assert torch.autograd.gradcheck(lambda *a: ssd_scan(*a, chunk=4), tuple(inputs.values()))


def mamba2(arch="unet", dims=2, size=16, **options):
    return build_model({"arch": arch, "dims": dims, "image_size": size,
                        "encoder": {"name": "mamba", "channels": [8, 16], "num_blocks": 1,
                                    "ssm": "mamba2", "head_dim": 4, "d_state": 4, "chunk_size": 16, **options}})


@pytest.mark.parametrize(("arch", "dims", "size"), [("unet", 2, 16), ("ae", 2, 16), ("unet", 3, 8)])
def test_mamba2_with_core_architectures(arch, dims, size):
    model = mamba2(arch, dims, size)
    x = torch.randn(2, 1, *[size] * dims)
    out = model(x)
    assert out.shape[2:] == x.shape[2:]
    out.square().mean().backward()
    mixers = [m for m in model.modules() if type(m).__name__ == "SSDMixerND"]
    assert mixers and all(m.A_log.grad is not None and m.A_log.grad.abs().sum() > 0 for m in mixers)
    assert mixers[0].A_log.shape == ({2: 4, 3: 12}[dims] * mixers[0].heads,)  # cross+flip: 4 / 12 directions


def test_mamba2_checkpoint_round_trip(tmp_path):
    model = mamba2().eval()
    loaded = load_model(save_model(model, tmp_path / "m2.safetensors")).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_mamba2_head_dim_must_divide_the_inner_width():
    with pytest.raises(ConfigError, match="head_dim 3 does not divide the inner width 16") as err:
        mamba2(head_dim=3)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="model.encoder.ssm"):
        mamba2(ssm="mamba3")
