"""The export scan (torch ``scan`` operators, ONNX ``Scan``) against the float64 sequential reference,
run eagerly and as an ONNX Runtime graph whose sequence length stays dynamic."""

from __future__ import annotations

import pytest
import torch
from flemme_mamba.scan import export_scan
from flemme_mamba.scan.export_scan import selective_scan_export
from flemme_mamba.scan.reference import selective_scan_ref
from mamba_testutil import scan_inputs

TOL = 1e-5  # max |error| / max |reference|; the export verification allows 1e-4


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


def reference(inputs: dict) -> torch.Tensor:
    return selective_scan_ref(**{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()})


SHAPES = [  # batch, groups, channels per group, L, N
    (2, 4, 8, 130, 16),     # 4 directions sharing B/C
    (1, 2, 6, 1, 5),        # one step; N not a multiple of the vector width
    (1, 1, 8, 1500, 16),    # long
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("regime", ["mamba", "large"])
def test_export_scan_matches_float64_reference(shape, regime):
    inputs = scan_inputs(*shape, regime=regime)
    out = selective_scan_export(**inputs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_err(out, reference(inputs)) <= TOL


def test_export_scan_ungrouped_and_without_optional_inputs():
    inputs = scan_inputs(2, 1, 8, 70, 16, ungrouped=True, with_z=False)
    inputs["D"] = None
    assert rel_err(selective_scan_export(**inputs), reference(inputs)) <= TOL


def test_export_scan_decays_down_to_e_minus_90_stay_finite():
    """Where a log-cumsum (divide by the running decay) form overflows in float32."""
    inputs = scan_inputs(1, 1, 8, 1500, 16)
    inputs["delta"][..., ::2] += 10.0
    out = selective_scan_export(**inputs)
    assert torch.isfinite(out).all() and rel_err(out, reference(inputs)) <= TOL


def test_softplus_matches_torch():
    x = torch.linspace(-100, 100, 20001)
    torch.testing.assert_close(export_scan.softplus(x), torch.nn.functional.softplus(x), rtol=2e-7, atol=1e-30)


class _Scan(torch.nn.Module):
    """The scan with its parameters as buffers, the sequence inputs as graph inputs."""

    def __init__(self, inputs: dict):
        super().__init__()
        for k in ("A", "D", "delta_bias"):
            self.register_buffer(k, inputs[k])

    def forward(self, u, delta, B, C, z):
        return selective_scan_export(u, delta, self.A, B, C, self.D, z, self.delta_bias, True)


def test_onnx_runtime_runs_the_exported_scan_at_any_length(tmp_path):
    """One export with dynamic batch and length, run by ONNX Runtime at three sizes, each against
    the float64 reference; no per-step node in the graph."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    names = ["u", "delta", "B", "C", "z"]
    first = scan_inputs(2, 2, 4, 256, 8)
    module = _Scan(first).eval()
    batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("length", min=2, max=1 << 20)
    dynamic = {k: {0: batch, (3 if k in "BC" else 2): length} for k in names}  # dynamic as in a model export
    program = torch.export.export(module, tuple(first[k] for k in names), dynamic_shapes=dynamic, strict=False)
    onnx_program = torch.onnx.export(program, tuple(first[k] for k in names), dynamo=True, input_names=names,
                                     output_names=["y"], verbose=False, optimize=True)
    nodes = len(onnx_program.model_proto.graph.node)
    assert nodes < 100, f"{nodes} top-level nodes: the length was unrolled"
    path = tmp_path / "scan.onnx"
    onnx_program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, n in ((2, 256), (1, 97), (3, 1000)):
        inputs = scan_inputs(b, 2, 4, n, 8)
        inputs.update({k: first[k] for k in ("A", "D", "delta_bias")})
        (out,) = session.run(None, {k: inputs[k].numpy() for k in names})
        assert rel_err(torch.from_numpy(out), reference(inputs)) <= TOL, n
