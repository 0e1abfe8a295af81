"""Small model configs shared by the tests."""

from __future__ import annotations


def tiny_model_config(encoder: str = "cnn", arch: str = "unet", dims: int = 2, size: int = 32, **extra):
    """The smallest config every encoder family must accept (used by the family × arch matrix)."""
    cfg = {"arch": arch, "encoder": {"name": encoder, "channels": [16, 32], "num_blocks": 1},
           "dims": dims, "image_size": size, "in_channels": 1, "out_channels": 2}
    cfg.update(extra)
    return cfg
