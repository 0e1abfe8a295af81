"""A test plugin module: registers ``warm_unet`` (``warm_unet.py``) lazily, for the studies
whose rows train from another row's cell (``FLEMME_PLUGIN_MODULES=warm_plugin``)."""

from flemme_core import hookimpl


@hookimpl
def register_architectures(register) -> None:
    register("warm_unet", "warm_unet:WarmUNet", "unet started from a flemme checkpoint's weights (arch_options.init)",
             task="segmentation")
