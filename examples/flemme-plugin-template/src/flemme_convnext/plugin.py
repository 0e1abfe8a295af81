"""Entry-point module: keep it cheap (no torch) so `flemme list` stays fast."""

from flemme_core import hookimpl


@hookimpl
def register_encoders(register) -> None:
    register("convnext", "flemme_convnext.family:encoder",
             "ConvNeXt-style blocks (depthwise 7×7 conv, layer norm, inverted MLP), 2D and 3D")
