"""Small vit/swin models for the tests (a uniquely named module: every plugin's tests run in one pytest)."""

from __future__ import annotations


def small_model(encoder: str, arch: str = "unet", dims: int = 2, image: int = 32, **enc):
    from flemme_core.build import build_model

    spec = {"name": encoder, "channels": [8, 16, 32], "num_blocks": 2, "patch_size": 2, "head_dim": 4, **enc}
    return build_model({"arch": arch, "image_size": [image] * dims, "in_channels": 1, "out_channels": 3,
                        "encoder": spec})
