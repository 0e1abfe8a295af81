"""The scan kernels against the float64 sequential reference: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
from flemme_mamba.scan.cpu import selective_scan_cpp
from flemme_mamba.scan.reference import selective_scan_ref
from flemme_mamba.scan.torch_scan import selective_scan_torch
from mamba_testutil import TENSOR_ARGS, scan_inputs

TOL = 1e-5  # max |error| / max |reference|, per output and per gradient


def run_with_grads(fn, inputs: dict, grad_out: torch.Tensor, dtype: torch.dtype, **kw):
    leaves = {k: (v.detach().to(dtype).requires_grad_() if isinstance(v, torch.Tensor) else v)
              for k, v in inputs.items()}
    out = fn(**leaves, **kw)
    out.backward(grad_out.to(dtype))
    grads = {k: leaves[k].grad for k in TENSOR_ARGS if isinstance(leaves.get(k), torch.Tensor)}
    return out.detach(), grads


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def check_against_reference(fn, inputs: dict, **kw) -> None:
    grad_out = torch.randn(inputs["u"].shape, dtype=torch.float64)
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, grad_out, torch.float64)
    out, grads = run_with_grads(fn, inputs, grad_out, torch.float32, **kw)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    errors = {"out": rel_err(out, ref_out)}
    errors.update({f"d{k}": rel_err(grads[k], ref_grads[k]) for k in ref_grads})
    assert set(errors) == {"out"} | {f"d{k}" for k in TENSOR_ARGS if inputs.get(k) is not None}
    bad = {k: f"{e:.1e}" for k, e in errors.items() if not e <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


SHAPES = [  # batch, groups (scan directions sharing B/C), channels per group, L, N
    (2, 1, 16, 64, 16),     # L exactly one chunk
    (2, 4, 8, 130, 16),     # 4 directions sharing B/C, L not a multiple of the chunk
    (1, 2, 6, 333, 5),      # N not a multiple of the vector width, odd channel count
    (2, 2, 5, 97, 24),      # generic (not unrolled) state loop, channel count not a multiple of 4
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("regime", ["mamba", "large"])
def test_cpp_scan_matches_float64_reference(shape, regime):
    check_against_reference(selective_scan_cpp, scan_inputs(*shape, regime=regime))


@pytest.mark.parametrize("chunk", [1, 7, 64, 500])
def test_cpp_scan_chunk_size_does_not_change_results(chunk):
    check_against_reference(selective_scan_cpp, scan_inputs(2, 2, 4, 150, 16), chunk=chunk)


@pytest.mark.parametrize("regime", ["mamba", "large"])
def test_torch_scan_matches_float64_reference(regime):
    check_against_reference(selective_scan_torch, scan_inputs(2, 4, 8, 130, 16, regime=regime))


@pytest.mark.parametrize("fn", [selective_scan_cpp, selective_scan_torch], ids=["cpp", "torch"])
def test_ungrouped_b_c_and_no_optional_inputs(fn):
    inputs = scan_inputs(2, 1, 8, 70, 16, ungrouped=True, with_z=False)
    inputs["D"] = None
    check_against_reference(fn, inputs)


@pytest.mark.parametrize("length", [1500, pytest.param(4096, marks=pytest.mark.slow)])
def test_long_sequence_with_mamba_dt_init_stays_finite_and_exact(length):
    """Where log-cumsum chunked scans overflow: small and large steps over a long sequence."""
    inputs = scan_inputs(1, 1, 8, length, 16)
    inputs["delta"][..., ::2] += 10.0  # dt alternates between ~1e-2 and ~5 (decays down to e^-90)
    check_against_reference(selective_scan_cpp, inputs)


def test_cpp_scan_gradcheck_float64():
    inputs = scan_inputs(1, 2, 3, 11, 5, dtype=torch.float64)
    keys = [k for k in TENSOR_ARGS if inputs[k] is not None]
    leaves = [inputs[k].clone().requires_grad_() for k in keys]

    def fn(*tensors):
        return selective_scan_cpp(**dict(zip(keys, tensors)), delta_softplus=True, chunk=4)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_results_do_not_depend_on_thread_count():
    inputs = scan_inputs(2, 2, 16, 200, 16)
    grad_out = torch.randn(2, 32, 200, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(run_with_grads(selective_scan_cpp, inputs, grad_out, torch.float32))
    (o1, g1), (o2, g2) = results
    assert torch.equal(o1, o2)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-5, atol=1e-6), k


def test_half_precision_inputs_come_back_in_their_dtype():
    inputs = scan_inputs(1, 1, 8, 40, 16)
    args = {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and k != "A" else v) for k, v in inputs.items()}
    out = selective_scan_cpp(**args)
    ref = selective_scan_ref(**{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()})
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 2e-2


@pytest.mark.parametrize("length", [1, 2, 5])
@pytest.mark.parametrize("fn", [selective_scan_cpp, selective_scan_torch], ids=["cpp", "torch"])
def test_very_short_sequences(fn, length):
    check_against_reference(fn, scan_inputs(1, 2, 3, length, 4))


@pytest.mark.parametrize("fn", [selective_scan_cpp, selective_scan_torch], ids=["cpp", "torch"])
def test_mixed_dtypes_bf16_activations_fp32_parameters(fn):
    """What the mixer passes outside autocast: bf16 u/delta/B/C/z with float32 A, D, bias."""
    inputs = scan_inputs(1, 2, 4, 40, 16)
    args = {k: (v.to(torch.bfloat16).requires_grad_() if isinstance(v, torch.Tensor) and k not in ("A", "D", "delta_bias")
                else v.requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    out = fn(**args)
    ref = selective_scan_ref(**{k: (v.detach().double() if isinstance(v, torch.Tensor) else v)
                                for k, v in args.items()})
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 2e-2
    out.float().sum().backward()
    for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
        assert args[k].grad is not None and args[k].grad.dtype == args[k].dtype, k


@pytest.mark.parametrize("fn", [selective_scan_cpp, selective_scan_torch], ids=["cpp", "torch"])
@pytest.mark.parametrize("ungrouped", [False, True])
def test_empty_sequence_gives_empty_output_and_gradients(fn, ungrouped):
    inputs = scan_inputs(2, 2, 3, 0, 4, ungrouped=ungrouped)
    leaves = {k: (v.requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    out = fn(**leaves)
    assert out.shape == (2, 6, 0)
    out.sum().backward()
    assert leaves["u"].grad.shape == (2, 6, 0)
    assert leaves["A"].grad is None or not leaves["A"].grad.any()


def test_states_above_the_kernel_limit_run_the_torch_scan_under_auto():
    from flemme_mamba.scan import KERNEL_MAX_STATE, select_backend, selective_scan

    from flemme_core.errors import ConfigError

    inputs = scan_inputs(1, 1, 4, 20, 300)
    assert select_backend("cpu", "auto", 300) == "torch" and select_backend("cpu", "torch", 256) == "torch"
    out = selective_scan(**inputs)  # auto: was "selective scan kernel rejected its arguments (N=304, groups=1)"
    ref = selective_scan_ref(**{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()})
    assert rel_err(out, ref) < TOL
    with pytest.raises(ConfigError, match=f"takes d_state up to {KERNEL_MAX_STATE}, got 300"):
        selective_scan(**inputs, backend="cpp")
    with pytest.raises(ValueError, match="at most 256 states, got N=300"):
        selective_scan_cpp(**inputs)
