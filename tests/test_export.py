"""`flemme export`: every installed family exports (ONNX, 2D and 3D, dynamic axes), the file
reproduces the eager model when run by ONNX Runtime itself, `flemme predict` on the file
writes what predict on the checkpoint writes, and failures leave nothing on disk.

The comparisons here run the written file with the runtimes directly (onnxruntime,
torch.export.load, torch.jit.load), independently of the exporter's own verification.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_configs import tiny_model_config

from flemme_core import build_model, save_model
from flemme_core.cli import main
from flemme_core.registry import get_registry
from flemme_core.testing import family_dims

pytest.importorskip("onnxruntime", reason="flemme-core[export] not installed")
pytest.importorskip("onnxscript", reason="flemme-core[export] not installed")

from flemme_core.export.exporter import RTOL, ExportError, export_checkpoint
from flemme_core.export.metadata import read_exported_metadata

FAMILIES = sorted(get_registry().components("encoder"))
#: every installed family in each dimension it declares (the conformance kit's ``dims=``)
#: minutes each on a 2-core CI machine (mamba 3D: the portable scan's loops through onnxscript's
#: optimizer; sam: a ViT-B-like trace), so they run with `nox -s slow`
HEAVY = {("mamba", 3), ("sam", 2)}
FAMILY_DIMS = [(family, dims) for family in FAMILIES for dims in family_dims(family)]


def _relative(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))


def _ort(path):
    """A plain ONNX Runtime session, with the plugins' custom-op libraries the file records
    (mamba's fused scan by default) registered as flemme's own sessions do."""
    import onnxruntime as ort

    from flemme_core.export.custom_ops import register_libraries

    options = ort.SessionOptions()
    register_libraries(options, read_exported_metadata(path)["custom_domains"], str(path))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _checkpoint(tmp_path, family="cnn", arch="unet", dims=2, **extra):
    size = 32 if dims == 2 else 16
    torch.manual_seed(0)
    model = build_model(tiny_model_config(family, arch, dims, size)).eval()
    path = save_model(model, tmp_path / f"{family}-{arch}-{dims}d.safetensors", extra=extra)
    return model, path


@pytest.mark.parametrize("family,dims", [pytest.param(*c, marks=[pytest.mark.slow] if c in HEAVY else [])
                                         for c in FAMILY_DIMS])
def test_every_family_exports_to_onnx_and_runs_in_onnxruntime(tmp_path, family, dims):
    model, ckpt = _checkpoint(tmp_path, family, "unet", dims)
    out = tmp_path / "model.onnx"
    try:
        meta = export_checkpoint(ckpt, out)
    except ExportError as exc:  # the build-matrix rule: a family that cannot export fails, saying why
        pytest.fail(f"family {family!r} ({dims}D unet) does not export to ONNX: {exc}")
    rule = meta["input"]
    assert read_exported_metadata(out)["input"] == rule
    session = _ort(out)
    sizes = [rule["patch_size"]]
    if rule["spatial"] == "dynamic":  # a second spatial size, inside the recorded rule
        sizes.append([p + rule["multiple_of"] for p in rule["patch_size"]])
    for batch, size in zip((1, 2), sizes + sizes[:1]):
        x = torch.randn(batch, 1, *size)
        with torch.no_grad():
            ref = model.predict(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == ref.shape
        assert _relative(got, ref) <= RTOL, (family, dims, size)


@pytest.mark.parametrize("fmt,suffix", [("torch-export", ".pt2"), ("torchscript", ".ts")])
def test_torch_formats_load_with_their_own_loaders(tmp_path, fmt, suffix):
    model, ckpt = _checkpoint(tmp_path, "cnn", "unet", 2)
    out = tmp_path / f"model{suffix}"
    meta = export_checkpoint(ckpt, out, fmt)
    assert meta["input"]["spatial"] == "dynamic"
    loaded = torch.export.load(str(out)).module() if fmt == "torch-export" else torch.jit.load(str(out))
    for shape in [(1, 1, 32, 32), (3, 1, 40, 48)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert _relative(loaded(x).numpy(), model.predict(x).numpy()) <= RTOL
    info = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["config"]["encoder"]["name"] == "cnn"


def test_mamba_torchscript_is_refused_in_one_line(tmp_path):
    if "mamba" not in FAMILIES:
        pytest.skip("flemme-mamba not installed")
    _, ckpt = _checkpoint(tmp_path, "mamba", "unet", 2)
    result = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "m.ts")])
    assert result.exit_code != 0
    assert "scan cannot be exported" in result.output and "--format onnx" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("m.ts*")) and not list(tmp_path.glob(".m.ts*"))


def test_failed_verification_keeps_no_file(tmp_path, monkeypatch):
    """A file that does not reproduce the model is deleted and the command fails."""
    from flemme_core.export import runtime

    _, ckpt = _checkpoint(tmp_path, "cnn", "unet", 2)
    real = runtime.load_runner

    def perturbed(*args, **kwargs):
        run = real(*args, **kwargs)
        return lambda x: run(x) * 1.01  # a 1 % error: what a wrong constant or op would give
    monkeypatch.setattr(runtime, "load_runner", perturbed)
    result = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code != 0
    assert "does not reproduce the model" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.name]


def test_bad_inputs_are_one_line(tmp_path):
    _, ckpt = _checkpoint(tmp_path, "cnn", "unet", 2)
    runner = CliRunner()
    for args, expected in [(["export", str(ckpt), "-o", str(tmp_path / "m.bin")], "cannot tell the export format"),
                           (["export", str(ckpt), "-o", str(tmp_path / "m.x"), "--format", "onx"], "did you mean"),
                           (["export", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "m.onnx")],
                            "does not exist")]:
        result = runner.invoke(main, args)
        assert result.exit_code != 0 and expected in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 100)
    for args in (["info", str(corrupt)], ["predict", str(corrupt), str(tmp_path / "x.nii.gz"), "-o", "y.nii.gz"]):
        result = runner.invoke(main, args)
        assert result.exit_code != 0
        assert "not a readable onnx file" in result.output or "not a flemme export" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory):
    """A checkpoint written by the trainer (its metadata: patch size, sliding window, preprocessing)."""
    from train_helpers import TINY_3D, config

    from flemme_core.training import train
    from flemme_core.training.config import run_config_from_dict

    out = tmp_path_factory.mktemp("export-predict") / "run"
    train(run_config_from_dict(config(TINY_3D, train={"steps": 3, "val_every": 0, "output": str(out)})), quiet=True)
    return out / "last.safetensors"


def test_predict_with_the_onnx_file_equals_predict_with_the_checkpoint(tmp_path, trained_3d):
    runner = CliRunner()
    onnx_path = tmp_path / "seg.onnx"
    result = runner.invoke(main, ["export", str(trained_3d), "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    affine = np.array([[0.0, -1.5, 0.0, 30.0], [2.0, 0.0, 0.0, -12.0], [0.0, 0.0, 1.2, 4.5], [0, 0, 0, 1]])
    volume = np.random.default_rng(0).normal(size=(30, 20, 27)).astype(np.float32)  # sliding window, padding
    src = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), str(src))
    outputs = {}
    for name, model_file in (("checkpoint", trained_3d), ("onnx", onnx_path)):
        dst = tmp_path / f"seg-{name}.nii.gz"
        result = runner.invoke(main, ["predict", str(model_file), str(src), "-o", str(dst)])
        assert result.exit_code == 0, result.output
        outputs[name] = nib.load(str(dst))
    np.testing.assert_allclose(outputs["onnx"].affine, affine, atol=1e-5)
    labels = {k: np.asarray(v.dataobj) for k, v in outputs.items()}
    assert labels["onnx"].shape == volume.shape
    np.testing.assert_array_equal(labels["onnx"], labels["checkpoint"])  # same labels: Dice 1.0 on every class
    meta = read_exported_metadata(onnx_path)
    ckpt_extra = json.loads(json.dumps(__import__("flemme_core").checkpoint.read_metadata(trained_3d)["extra"]))
    assert meta["extra"] == ckpt_extra  # preprocessing, patch, sliding window, classes carried over as recorded


def test_predict_enforces_the_recorded_shape_rule(tmp_path):
    from flemme_core.errors import ShapeError
    from flemme_core.export.runtime import ExportedModel

    _, ckpt = _checkpoint(tmp_path, "cnn", "unet", 2)
    out = tmp_path / "m.onnx"
    export_checkpoint(ckpt, out)
    model = ExportedModel(out)
    multiple = model.rule["multiple_of"]
    assert model.predict(torch.randn(1, 1, 32 + multiple, 32)).shape == (1, 2, 32 + multiple, 32)
    with pytest.raises(ShapeError, match=f"multiples of {multiple}"):
        model.predict(torch.randn(1, 1, 33, 32))


STUDENT = {"name": "cnn", "channels": [8, 16], "norm": "group"}
TEACHER = {"name": "mmfd", "branches": [STUDENT, {"name": "cnn", "channels": [8, 16, 24], "norm": "group"}],
           "fusion": "gated"}
ARCHS = [a for a in ("ae", "hunet", "hae") if a in get_registry().components("architecture")]


def _arch_cases():
    cases = [(family, arch, dims) for family, dims in FAMILY_DIMS for arch in ARCHS]
    if "distill" in get_registry().components("architecture"):
        cases += [("cnn", "distill", dims) for dims in (2, 3)]
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("family,arch,dims", _arch_cases())
def test_every_family_and_architecture_exports(tmp_path, family, arch, dims):
    """ae, hunet, hae for every family and the distillation student, 2D and 3D: ONNX with the
    same checks as the unet matrix (the exporter's verification plus ONNX Runtime here)."""
    size = 32 if dims == 2 else 16
    if arch == "distill":
        cfg = {"arch": "distill", "dims": dims, "image_size": size, "encoder": STUDENT,
               "arch_options": {"teacher": TEACHER}}
    else:
        cfg = tiny_model_config(family, arch, dims, size)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ckpt = save_model(model, tmp_path / "m.safetensors")
    try:
        meta = export_checkpoint(ckpt, tmp_path / "m.onnx")
    except ExportError as exc:
        pytest.fail(f"{family} {arch} {dims}D does not export to ONNX: {exc}")
    session = _ort(tmp_path / "m.onnx")
    x = torch.randn(2, 1, *meta["input"]["patch_size"])
    with torch.no_grad():
        ref = model.predict(x).numpy()
    assert _relative(session.run(None, {"image": x.numpy()})[0], ref) <= RTOL


def test_missing_export_packages_are_one_line(tmp_path, monkeypatch):
    import importlib.util

    _, ckpt = _checkpoint(tmp_path, "cnn", "unet", 2)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    result = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code != 0
    assert "needs onnxscript" in result.output and "pip install 'flemme-core[export]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
