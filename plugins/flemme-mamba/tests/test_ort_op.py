"""The fused ONNX Runtime op ``flemme.mamba::SelectiveScan`` (scan/ort_op.py, csrc/ort_selective_scan.cpp)
against the float64 sequential reference, and mamba ``unet`` exports that use it (the default)
or standard operators only (``--portable``), run by ONNX Runtime sessions made here."""

from __future__ import annotations

import pytest
import torch
from flemme_mamba.scan.reference import selective_scan_ref
from mamba_testutil import scan_inputs

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from flemme_mamba.scan.build import kernel_problem
from flemme_mamba.scan.ort_op import DOMAIN, OP, library_path, selective_scan_fused, translations

pytestmark = pytest.mark.skipif(bool(kernel_problem()), reason="no C++ compiler: the fused op cannot be built")

TOL = 1e-5  # max |error| / max |reference|; the export verification allows 1e-4
NAMES = ["u", "delta", "B", "C", "z"]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


def reference(inputs: dict) -> torch.Tensor:
    return selective_scan_ref(**{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()})


def session(path_or_bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library_path())
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


class _Fused(torch.nn.Module):
    """selective_scan_fused with A, D, delta_bias as buffers and the sequences as graph inputs."""

    def __init__(self, inputs: dict):
        super().__init__()
        self.softplus = inputs["delta_softplus"]
        for k in ("A", "D", "delta_bias"):
            self.register_buffer(k, inputs[k])

    def forward(self, u, delta, B, C, z):
        return selective_scan_fused(u, delta, self.A, B, C, self.D, z, self.delta_bias, self.softplus)


SHAPES = [  # batch, groups, channels per group, L, N
    (2, 4, 8, 130, 16),     # 4 directions sharing B/C, Mamba's N
    (1, 2, 6, 1, 5),        # one step; N not a multiple of the vector width; channels not a multiple of 16
    (1, 1, 40, 300, 8),     # several channel blocks of one group
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("regime", ["mamba", "large"])
def test_fused_op_in_onnx_runtime_matches_float64_reference(shape, regime):
    """Exported once with dynamic batch and length (one SelectiveScan node, no Scan; traced at
    sizes >= 2, which torch does not specialise), then run at the shape and at another batch
    and length; D, z, delta_bias, softplus and groups as the mixer passes them ('large': raw
    step sizes up to 10, no bias/softplus)."""
    b, groups, per, length_, n = shape
    first = scan_inputs(b + 1, groups, per, length_ + 2, n, regime=regime)
    if first["delta_bias"] is None:
        first["delta_bias"] = torch.zeros(first["u"].shape[1])
    module = _Fused(first).eval()
    batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("length", min=1, max=1 << 20)
    dynamic = {k: {0: batch, (3 if k in "BC" else 2): length} for k in NAMES}
    program = torch.export.export(module, tuple(first[k] for k in NAMES), dynamic_shapes=dynamic, strict=False)
    proto = torch.onnx.export(program, tuple(first[k] for k in NAMES), dynamo=True, input_names=NAMES,
                              output_names=["y"], verbose=False, optimize=True,
                              custom_translation_table=translations()).model_proto
    ops = [(n.domain, n.op_type) for n in proto.graph.node]
    assert ops.count((DOMAIN, OP)) == 1 and not any(t == "Scan" for _, t in ops), ops
    run = session(proto.SerializeToString())
    for size in ((b, length_), (b + 1, length_ + 37)):
        inputs = scan_inputs(size[0], groups, per, size[1], n, regime=regime)
        inputs.update({k: first[k] for k in ("A", "D", "delta_bias")})
        (out,) = run.run(None, {k: inputs[k].numpy() for k in NAMES})
        assert rel_err(torch.from_numpy(out), reference(inputs)) <= TOL, size


def test_fused_scan_eagerly_and_without_optional_inputs():
    """The torch op's eager path (the C++ kernel) with one B/C group in the 3D layout, no D, no z."""
    inputs = scan_inputs(2, 1, 8, 70, 16, ungrouped=True, with_z=False)
    inputs["D"] = None
    assert rel_err(selective_scan_fused(**inputs), reference(inputs)) <= TOL


# --- mamba unet exports ------------------------------------------------------------------------------


def _checkpoint(tmp_path, dims: int):
    from flemme_core import build_model, save_model

    torch.manual_seed(0)  # the core's tiny conformance config (tests/model_configs.py)
    model = build_model({"arch": "unet", "encoder": {"name": "mamba", "channels": [16, 32], "num_blocks": 1},
                         "dims": dims, "image_size": 32 if dims == 2 else 16, "in_channels": 1,
                         "out_channels": 2}).eval()
    return model, save_model(model, tmp_path / f"mamba-{dims}d.safetensors")


def _check_against_eager(model, path, rule, run) -> None:
    sizes = [rule["patch_size"], [p + rule["multiple_of"] for p in rule["patch_size"]]]
    for batch, size in zip((1, 2), sizes):
        x = torch.randn(batch, 1, *size)
        with torch.no_grad():
            ref = model.predict(x)
        got = torch.from_numpy(run.run(None, {run.get_inputs()[0].name: x.numpy()})[0])
        assert rel_err(got, ref.double()) <= 1e-4, size


@pytest.mark.parametrize("dims", [2, 3])
def test_mamba_unet_exports_with_the_fused_op_by_default(tmp_path, dims):
    import onnx

    from flemme_core.export.exporter import export_checkpoint

    model, ckpt = _checkpoint(tmp_path, dims)
    out = tmp_path / "fused.onnx"
    meta = export_checkpoint(ckpt, out)
    assert meta["custom_domains"] == [DOMAIN] and meta["input"]["spatial"] == "dynamic"
    assert any("flemme.mamba::SelectiveScan" in note for note in meta["notes"])
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert OP in ops and "Scan" not in ops
    _check_against_eager(model, out, meta["input"], session(str(out)))


def test_portable_export_uses_standard_operators_only(tmp_path):
    """`flemme export --portable`: the scan as an ONNX Scan, runnable by a bare ONNX Runtime."""
    import onnx
    from click.testing import CliRunner

    from flemme_core.cli import main
    from flemme_core.export.metadata import read_exported_metadata

    model, ckpt = _checkpoint(tmp_path, 2)
    out = tmp_path / "portable.onnx"
    result = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(out), "--portable"])
    assert result.exit_code == 0, result.output
    meta = read_exported_metadata(out)
    assert meta["custom_domains"] == [] and not any("SelectiveScan" in note for note in meta["notes"])
    proto = onnx.load(str(out))
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx", "ai.onnx.ml"}
    assert "Scan" in [n.op_type for n in proto.graph.node]
    plain = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # no flemme library
    _check_against_eager(model, out, meta["input"], plain)


def test_a_file_needing_a_missing_domain_fails_in_one_line(tmp_path, monkeypatch):
    """`flemme predict` on a fused file where no installed plugin provides the domain."""
    from click.testing import CliRunner

    from flemme_core.cli import main
    from flemme_core.export import custom_ops
    from flemme_core.export.exporter import export_checkpoint

    _, ckpt = _checkpoint(tmp_path, 2)
    out = tmp_path / "fused.onnx"
    export_checkpoint(ckpt, out)
    monkeypatch.setattr(custom_ops, "providers", dict)
    with pytest.raises(custom_ops.MissingCustomOps) as err:
        from flemme_core.export.runtime import ExportedModel

        ExportedModel(out)
    message = str(err.value)
    assert "\n" not in message and repr(DOMAIN) in message and "--portable" in message and "flemme-mamba" in message
    import numpy as np
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray((np.random.rand(32, 32) * 255).astype(np.uint8)).save(image)
    result = CliRunner().invoke(main, ["predict", str(out), str(image), "-o", str(tmp_path / "y.png")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("Error:") and DOMAIN in result.output
