"""Entry point of flemme-monai: names, descriptions and lazy factories only (no torch, no MONAI).

Every network is registered with ``encoder=False`` (a whole network: the core builds it
without an encoder family and refuses a config that names one) and ``widths=`` naming the
``arch_options`` key that sets its widths (what ``flemme compare``'s ``match: params`` scales).
"""

from flemme_core.hookspecs import hookimpl

_NETS = "flemme_monai.networks"

#: flemme name -> (class in networks.py, widths option, description)
NETWORKS = {
    "monai-unet": ("MonaiUNet", "channels",
                   "MONAI UNet (residual units, strided convs); default 16-32-64-128, strides 2, 2 residual units"),
    "monai-basicunet": ("MonaiBasicUNet", "features",
                        "MONAI BasicUNet (two convs per level, max-pool); default features 32-32-64-128-256-32"),
    "monai-dynunet": ("MonaiDynUNet", "filters",
                      "MONAI DynUNet (nnU-Net style); default filters 32-64-128-256, first level at full resolution"),
    "monai-unetr": ("MonaiUNETR", "hidden_size",
                    "MONAI UNETR (ViT encoder, 16^d patches, conv decoder); needs a fixed image size"),
    "monai-swinunetr": ("MonaiSwinUNETR", "feature_size",
                        "MONAI SwinUNETR (Swin encoder, conv decoder); feature_size a multiple of 12"),
}


@hookimpl
def register_architectures(register) -> None:
    for name, (cls, widths, description) in NETWORKS.items():
        register(name, f"{_NETS}:{cls}", description, encoder=False, widths=widths,
                 width_multiple=12 if widths in ("hidden_size", "feature_size") else 1, task="segmentation")
