"""Entry point of flemme-pyramid: names and lazy factories only (no torch import)."""

from flemme_core.hookspecs import hookimpl

_ARCH = "flemme_pyramid.architectures"


@hookimpl
def register_architectures(register) -> None:
    register("hunet", f"{_ARCH}:HUNet",
             "hierarchical segmentation (Flemme's HSeM): unet + per-level refinement and heads, "
             "vertical fusion, pyramid loss; any encoder family", task="segmentation")
    register("hae", f"{_ARCH}:HAE",
             "hierarchical reconstruction (Flemme's HAE): ae + per-level refinement and heads, "
             "vertical fusion, pyramid loss; any encoder family", task="reconstruction")


@hookimpl
def register_losses(register) -> None:
    register("pyramid", "flemme_pyramid.loss:pyramid",
             "deep supervision over [fused, level outputs fine to coarse]: wraps other losses "
             "(losses: [...]), level_weights equal|halving, pyramid_weight")
