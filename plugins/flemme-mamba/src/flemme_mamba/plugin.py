"""Entry point of flemme-mamba: registers names and lazy factories only (no torch import)."""

from flemme_core.hookspecs import hookimpl


@hookimpl
def register_encoders(register) -> None:
    register("mamba", "flemme_mamba.family:encoder",
             "VMamba selective-scan blocks (SS2D / SS3D: single, cross, +flip scans), patch merging down, "
             "patch expansion up; C++ CPU scan, mamba-ssm on CUDA; 2D and 3D")


@hookimpl
def register_onnx_ops(register) -> None:
    register("flemme.mamba", "flemme_mamba.scan.ort_op:onnx_ops",
             "SelectiveScan: the C++ CPU scan as one fused ONNX Runtime op (the default for `flemme export`)")
