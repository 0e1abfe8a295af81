"""Helpers shared by flemme-diffusion's tests (a unique module name: no clash with other conftests)."""

from __future__ import annotations


def families() -> list[str]:
    """Every installed encoder family: a new family is tested without editing these tests."""
    from flemme_core.registry import get_registry

    return sorted(get_registry().components("encoder"))


def build_or_skip(arch: str, family: str, dims: int, **arch_options):
    """``build``, or skip where the family declares it cannot serve: a dimension it does not
    support, or no context injection (then the refusal itself must be one line)."""
    import pytest

    from flemme_core.errors import ConfigError
    from flemme_core.testing import family_dims

    if dims not in family_dims(family):
        pytest.skip(f"{family} is {family_dims(family)}D only")
    try:
        return build(arch, family, dims, **arch_options)
    except ConfigError as exc:
        if "supports_context is False" not in str(exc):
            raise
        assert "\n" not in str(exc)
        pytest.skip(f"{family} declares no context injection; {arch} refuses it in one line")


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
