"""Entry point of flemme-cnn: registers names and lazy factories only (no torch import)."""

from flemme_core.hookspecs import hookimpl


@hookimpl
def register_encoders(register) -> None:
    register("cnn", "flemme_cnn.family:encoder",
             "convolutional family: conv / double_conv / res_conv blocks, strided-conv or pooling down, "
             "transposed-conv or interpolation up; 2D and 3D")
