"""The trainer has no family- or architecture-specific code: whatever is registered trains.

Each installed architecture (with the tiny test family) and each installed encoder family (in a
unet) trains two steps on generated images and is evaluated. A few representative ones
run by default; the whole matrix is marked slow.
"""

from __future__ import annotations

import pytest

from flemme_core.registry import get_registry
from flemme_core.training.config import run_config_from_dict

DATA = {"preset": "synthetic-2d", "options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]},
        "patch_size": [32, 32], "batch_size": 2}
#: architectures that cannot exist without options (a teacher; a trained autoencoder file).
NEEDS = {"distill": {"teacher": {"name": "tiny", "channels": [16, 32]}}, "ldm": None}
QUICK = {("vit", "unet"), ("tiny", "hunet"), ("tiny", "vae"), ("tiny", "distill"), ("tiny", "unet")}


def _combos() -> list[tuple[str, str]]:
    registry = get_registry()
    # whole networks (registered with encoder=False) train in tests/test_encoderless.py and their plugin's tests
    archs = sorted(a for a, c in registry.components("architecture").items()
                   if NEEDS.get(a, {}) is not None and c.metadata.get("encoder", True) is not False)
    encoders = sorted(e for e in registry.components("encoder") if e != "tiny")
    return [("tiny", a) for a in archs] + [(e, "unet") for e in encoders]


def _params() -> list:
    return [pytest.param(e, a, id=f"{e}-{a}", marks=() if (e, a) in QUICK else pytest.mark.slow)
            for e, a in _combos()]


@pytest.mark.parametrize(("encoder", "arch"), _params())
def test_registered_components_train_and_evaluate(tmp_path, encoder, arch):
    from flemme_core.training import train

    example = get_registry().components("encoder")[encoder].metadata.get("example", {})
    model = {"arch": arch, "encoder": {"name": encoder, "channels": [16, 32], "num_blocks": 1, **example}}
    if NEEDS.get(arch):
        model["arch_options"] = NEEDS[arch]
    run = run_config_from_dict({"model": model, "data": DATA,
                                "train": {"steps": 2, "val_every": 0, "threads": 1, "output": str(tmp_path / "run")}})
    summary = train(run, quiet=True)
    assert summary["steps"] >= 2  # multi-stage architectures run 2 steps per stage
    assert summary["final"], "no held-out metrics"
    assert (tmp_path / "run" / "last.safetensors").is_file()
