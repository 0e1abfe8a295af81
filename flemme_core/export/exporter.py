"""``flemme export``: trace a checkpoint's inference, write it, and check the file against eager.

The graph exported is :meth:`Architecture.predict` (the single inference output: the
student of a distillation, the full-resolution head of a pyramid) on ``(B, C, *S)`` float32.

Axes. Batch is always dynamic. Spatial axes are dynamic multiples of the model's total
stride (the lcm over its encoders), from the training patch size up — the sliding window
feeds exactly the patch size, whole-image inference larger multiples. A model whose code
specialises on the spatial size (it computes something from the size in Python that the
tracer cannot keep symbolic), or whose dynamic graph does not reproduce eager at a second
size, is exported with fixed spatial axes instead, and the export says why. The rule is
recorded in the file and ``flemme predict`` enforces it.

ONNX goes through the dynamo exporter (``torch.onnx.export(exported_program)``): the
TorchScript-based exporter cannot express torch's scan operators (the exportable forms of
the state-space scans, see :mod:`.modes`), and records Python loops unrolled at the traced
length, losing the dynamic axes. Plugins' fused ONNX Runtime ops (``register_onnx_ops``, see
:mod:`.custom_ops`) are offered to the modules unless ``portable`` asks for standard operators
only; the file records the custom domains its graph needs.

Verification is not optional: the written file is loaded by its runtime (ONNX Runtime;
``torch.export.load``; ``torch.jit.load``) and compared with the eager model (in its normal
mode, e.g. with its C++ kernels) on random inputs of the patch size and a second size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FlemmeError
from .formats import FORMATS, check_format, require
from .metadata import FORMAT, KEY, ZIP_MEMBER
from .modes import export_mode, fixed_spatial_reasons

#: Relative tolerance of the verification: max |exported − eager| / max |eager|.
#:
#: fp32 has a unit round-off of 6e-8. An exported graph computes the same operations in
#: another order and with other kernels (ONNX Runtime's fused conv/GEMM, decomposed norms,
#: a scan in chunks instead of a C++ loop), so every reduction of K terms can differ by
#: about sqrt(K)·eps of its scale, compounding over tens of layers: measured 1e-7 to 5e-6
#: for every family here. 1e-4 keeps 20× head-room over that while a real defect — a
#: dropped bias, a wrong window or flip, a constant baked at the traced size, an op with
#: other semantics — moves outputs by 1e-2 or more of their scale.
RTOL = 1e-4

Log = Callable[[str], None]


class ExportError(FlemmeError):
    """The model cannot be exported, or the file does not reproduce it."""


class _Inference(nn.Module):
    """The exported graph: ``image -> model.predict(image)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.predict(image)


def model_stride(model: nn.Module) -> int:
    """The spatial multiple the model needs: lcm of the total strides of its encoders."""
    from ..encoder import Encoder

    stride = 1
    for module in model.modules():
        if isinstance(module, Encoder):
            stride = math.lcm(stride, int(module.total_stride))
    return stride


def _first_line(exc: BaseException | str, limit: int = 160) -> str:
    """The informative line of an exporter/runtime error (they span pages), shortened."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    summary = [ln for ln in lines if ln.startswith("<class '")]  # torch.onnx's "Exception summary"
    text = summary[0].split(">: ", 1)[-1] if summary else (lines[0] if lines else type(exc).__name__)
    text = text.split("Status Message: ")[-1]  # ONNX Runtime: the message after its source location
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def _quiet():
    """The exporters log registry warnings (torchvision ops) and print progress: hide them."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes",
             "torch._dynamo", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _trace(wrapper: nn.Module, fmt: str, example: torch.Tensor, stride: int, patch: list[int],
           dynamic_spatial: bool) -> Any:
    """ExportedProgram (onnx, torch-export) or a traced ScriptModule (torchscript)."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.trace(wrapper, example, check_trace=False)
    from torch.export import Dim

    axes: dict[int, Any] = {0: Dim("batch", min=1, max=65536)}
    if dynamic_spatial:
        for i, p in enumerate(patch):
            axes[2 + i] = stride * Dim(f"spatial{i}", min=max(1, p // stride), max=65536 // stride)
    return torch.export.export(wrapper, (example,), dynamic_shapes={"image": axes}, strict=False)


def _convert(artifact: Any, fmt: str, example: torch.Tensor, table: dict[Any, Any]) -> Any:
    """What is saved: the ONNX protobuf (converted once, custom ops through ``table``), or the
    torch artifact itself."""
    if fmt != "onnx":
        return artifact
    # optimize=True: the unoptimised graph of some models is refused by ONNX Runtime (a Conv bias
    # of the wrong rank); the optimizer is superlinear on very large graphs (mamba's demo-size unet)
    program = torch.onnx.export(artifact, (example,), dynamo=True, input_names=["image"],
                                output_names=["output"], verbose=False, optimize=True,
                                custom_translation_table=table or None)
    return program.model_proto


def _save(converted: Any, fmt: str, path: str, meta: dict[str, Any]) -> None:
    text = json.dumps(meta, sort_keys=True, default=str)
    name = ZIP_MEMBER.split("/")[-1]
    if fmt == "onnx":
        import onnx

        del converted.metadata_props[:]
        entry = converted.metadata_props.add()
        entry.key, entry.value = KEY, text
        onnx.save_model(converted, path)
    elif fmt == "torch-export":
        torch.export.save(converted, path, extra_files={name: text})
    else:
        torch.jit.save(converted, path, _extra_files={name: text})


def _example(batch: int, channels: int, size: list[int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *size, generator=gen)


def _compare(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        ref = model.predict(x).float()
    out = run(x).float()
    if tuple(out.shape) != tuple(ref.shape):
        return {"shape": list(x.shape), "max_abs_diff": math.inf, "relative_error": math.inf,
                "problem": f"output shape {tuple(out.shape)} instead of {tuple(ref.shape)}"}
    diff = float((out - ref).abs().max())
    scale = max(float(ref.abs().max()), 1e-12)
    return {"shape": list(x.shape), "max_abs_diff": diff, "relative_error": diff / scale}


def verify(path: str | Path, fmt: str, model: nn.Module, inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Run the written file on each input and compare with the eager model."""
    from .runtime import load_runner

    run = load_runner(path, fmt, "cpu")
    checks = []
    for x in inputs:
        try:
            checks.append(_compare(run, model, x))
        except Exception as exc:  # noqa: BLE001 - the runtime refusing an input is a failed check
            checks.append({"shape": list(x.shape), "max_abs_diff": math.inf, "relative_error": math.inf,
                           "problem": _first_line(exc)})
    return checks


def _check_text(fmt: str, check: dict[str, Any]) -> str:
    shape = "×".join(map(str, check["shape"]))
    ok = "ok" if check["relative_error"] <= RTOL else "FAILED"
    extra = f" ({check['problem']})" if "problem" in check else ""
    return (f"verify {fmt} on {shape}: max abs diff {check['max_abs_diff']:.2e}, relative error "
            f"{check['relative_error']:.2e} (tolerance {RTOL:.0e}) {ok}{extra}")


class _Plan:
    """What one export needs: the model, its inputs' shape rule and the log."""

    def __init__(self, checkpoint: str | Path, fmt: str, log: Log, portable: bool = False):
        from ..checkpoint import load_model, read_metadata
        from .custom_ops import for_export

        self.fmt, self.log = fmt, log
        self.domains, self.table, self.domain_notes = for_export(portable) if fmt == "onnx" else ([], {}, [])
        self.ckpt = read_metadata(checkpoint)
        self.model = load_model(checkpoint, map_location="cpu").float().eval()
        cfg = self.model.config
        extra = dict(self.ckpt.get("extra") or {})
        self.patch = [int(s) for s in (extra.get("roi_size") or cfg.image_size)]
        self.stride = model_stride(self.model)
        self.channels = int(cfg.in_channels)
        self.second = [p + self.stride for p in self.patch]
        self.wrapper = _Inference(self.model).eval()
        self.what = f"{cfg.arch} with encoder {(self.ckpt['config'].get('encoder') or {}).get('name')}"

    def rule(self, dynamic: bool) -> dict[str, Any]:
        return {"in_channels": self.channels, "patch_size": self.patch, "batch": "dynamic",
                "spatial": "dynamic" if dynamic else "fixed", "multiple_of": self.stride, "min": self.patch}

    def attempt(self, tmp: str, dynamic: bool, reasons: list[str]) -> dict[str, Any] | None:
        """Trace, write and verify once; the metadata written, or None after adding to
        ``reasons`` why dynamic spatial axes do not work (then the caller fixes them)."""
        fmt, fixed = self.fmt, f"spatial axes fixed at {'×'.join(map(str, self.patch))}"
        inputs = [_example(1, self.channels, self.patch, 1),
                  _example(2, self.channels, self.second if dynamic else self.patch, 2)]
        trace_size = [p if p // self.stride != 1 else 2 * self.stride for p in self.patch]  # no 0/1 specialising
        try:
            with _quiet(), export_mode(self.model, fmt, self.domains) as notes:
                artifact = _trace(self.wrapper, fmt, _example(2, self.channels, trace_size, 0), self.stride,
                                  self.patch, dynamic)
            with _quiet():
                notes = self.domain_notes + notes
                converted = _convert(artifact, fmt, inputs[0], self.table)
                _save(converted, fmt, tmp, _metadata(self, dynamic, notes + reasons, [], converted))
        except FlemmeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the tracer's or converter's refusal, in one line
            if dynamic:
                reasons.append(f"{fixed}: dynamic spatial export failed ({_first_line(exc)})")
                return None
            raise ExportError(f"cannot export {self.what} to {fmt}: {_first_line(exc)}") from None
        with _quiet():
            checks = verify(tmp, fmt, self.model, inputs)
        for check in checks:
            self.log(_check_text(fmt, check))
        if dynamic and checks[0]["relative_error"] <= RTOL < checks[1]["relative_error"]:
            why = checks[1].get("problem") or f"relative error {checks[1]['relative_error']:.1e}"
            reasons.append(f"{fixed}: the dynamic graph does not reproduce the model at "
                           f"{'×'.join(map(str, self.second))} ({_first_line(why)})")
            return None
        worst = max(checks, key=lambda c: c["relative_error"])
        if worst["relative_error"] > RTOL:
            raise ExportError(f"the exported {fmt} file does not reproduce the model (relative error "
                              f"{worst['relative_error']:.2e} > {RTOL:.0e} on {'×'.join(map(str, worst['shape']))}"
                              f"{'; ' + worst['problem'] if 'problem' in worst else ''}); not written")
        meta = _metadata(self, dynamic, notes + reasons, checks, converted)
        with _quiet():
            _save(converted, fmt, tmp, meta)  # the same graph, now with its verification figures
        for note in notes + reasons:
            self.log(f"note: {note}")
        return meta


def export_checkpoint(checkpoint: str | Path, output: str | Path, fmt: str = "auto",
                      log: Log | None = None, portable: bool = False) -> dict[str, Any]:
    """Export a checkpoint's inference to ``output``; returns the metadata written.

    Nothing is left at ``output`` unless the file passed verification (written to a temporary
    file beside it, renamed at the end). ``portable``: ONNX with standard operators only (for
    runtimes without flemme's plugins), instead of the plugins' fused custom ops."""
    from ..checkpoint import atomic_write

    fmt = check_format(fmt, output)
    require(fmt)
    plan = _Plan(checkpoint, fmt, log or (lambda text: None), portable)
    result: dict[str, Any] = {}

    def build(tmp: str) -> None:
        fixed = fixed_spatial_reasons(plan.model)
        reasons = [f"spatial axes fixed at {'×'.join(map(str, plan.patch))}: {r}" for r in fixed]
        meta = (None if fixed else plan.attempt(tmp, True, reasons)) or plan.attempt(tmp, False, reasons)
        result.update(meta or {})

    with _quiet():
        atomic_write(output, build)
    return result


def _metadata(plan: _Plan, dynamic: bool, notes: list[str], checks: list[dict[str, Any]],
              converted: Any) -> dict[str, Any]:
    import importlib.metadata as md

    from .custom_ops import used_domains

    exported_with = {"torch": torch.__version__}
    if plan.fmt == "onnx":
        for name in ("onnx", "onnxscript", "onnxruntime"):
            with contextlib.suppress(md.PackageNotFoundError):
                exported_with[name] = md.version(name)
    ckpt = plan.ckpt
    return {"format": FORMAT, "format_name": plan.fmt, "config": ckpt["config"], "versions": ckpt["versions"],
            "components": ckpt["components"], "parameters": ckpt.get("parameters", 0),
            "extra": ckpt.get("extra") or {}, "task": getattr(plan.model, "task", "segmentation"),
            "input": plan.rule(dynamic), "notes": notes,
            "verification": checks, "exported_with": exported_with, "rtol": RTOL,
            "description": FORMATS[plan.fmt][1],
            "custom_domains": used_domains(converted, plan.domains) if plan.fmt == "onnx" else []}


__all__ = ["RTOL", "ExportError", "export_checkpoint", "model_stride", "verify"]
