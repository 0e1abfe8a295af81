"""Entry point of flemme-vit: registers names and lazy factories only (no torch import)."""

from flemme_core.hookspecs import hookimpl


@hookimpl
def register_encoders(register) -> None:
    register("vit", "flemme_vit.vit:encoder",
             "vision transformer: patch embedding, global multi-head self-attention blocks, "
             "patch merging down / patch expansion up; 2D and 3D")
    register("swin", "flemme_vit.swin:encoder",
             "Swin transformer: shifted-window attention with relative position bias, "
             "patch merging down / patch expansion up; 2D and 3D")
