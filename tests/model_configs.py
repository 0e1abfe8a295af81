"""Small model configs shared by the tests."""

from __future__ import annotations


def tiny_model_config(encoder: str = "tiny", arch: str = "unet", dims: int = 2, size: int = 32, **extra):
    """The smallest config every encoder family must accept (used by the family × arch matrix).

    A family that needs options to exist at all (a fusion of branches) declares them when it
    registers: ``register(name, factory, description, example={...})``.
    """
    from flemme_core.registry import get_registry

    example = get_registry().components("encoder")[encoder].metadata.get("example", {})
    cfg = {"arch": arch, "encoder": {"name": encoder, "channels": [16, 32], "num_blocks": 1, **example},
           "dims": dims, "image_size": size, "in_channels": 1, "out_channels": 2}
    cfg.update(extra)
    return cfg


def requires_encoders(*names: str):
    """Mark a core test that exercises plugins' families (switching cnn -> vit, say): skipped when
    they are not installed, as with flemme-core alone (``nox -s isolated``)."""
    import pytest

    from flemme_core.registry import get_registry

    missing = [n for n in names if n not in get_registry().components("encoder")]
    return pytest.mark.skipif(bool(missing), reason=f"needs the encoder families {', '.join(missing)} (plugins)")
