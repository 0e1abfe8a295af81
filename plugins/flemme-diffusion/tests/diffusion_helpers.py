"""Helpers shared by flemme-diffusion's tests (a unique module name: no clash with other conftests)."""

from __future__ import annotations


def families() -> list[str]:
    """Every installed encoder family: a new family is tested without editing these tests."""
    from flemme_core.registry import get_registry

    return sorted(get_registry().components("encoder"))


def tiny(arch: str, family: str = "cnn", dims: int = 2, size: int | None = None, **arch_options):
    """The smallest config of ``arch`` over ``family`` (a family's registered ``example`` options apply)."""
    from flemme_core.registry import get_registry

    size = size or (32 if dims == 2 else 16)
    example = get_registry().components("encoder")[family].metadata.get("example", {})
    if arch in ("ddpm", "sdm", "ldm"):
        arch_options.setdefault("timesteps", 50)
    if arch != "vae":
        arch_options.setdefault("context_dim", 16)
    return {"arch": arch, "encoder": {"name": family, "channels": [16, 32], "num_blocks": 1, **example},
            "dims": dims, "image_size": size, "in_channels": 1, "out_channels": 1, "arch_options": arch_options}


def build(arch: str, family: str = "cnn", dims: int = 2, size: int | None = None, **arch_options):
    from flemme_core.build import build_model

    return build_model(tiny(arch, family, dims, size, **arch_options))
