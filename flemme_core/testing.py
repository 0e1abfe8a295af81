"""The conformance kit for encoder families: what every family owes every architecture.

Importable from any plugin's tests (no source tree of flemme needed)::

    from flemme_core.testing import check_family

    def test_conformance():
        check_family("convnext")

:func:`check_family` runs each check below and raises :class:`ConformanceError` (an
``AssertionError``, so pytest shows it as a failure) naming the family, the check and what
went wrong. Each check is also public, to run or parametrise on its own:

* :func:`check_contract`: features fine to coarse, channels-first, with the declared
  ``feature_channels`` and ``feature_strides``, in 2D and 3D;
* :func:`check_architectures`: every installed architecture (not only ``unet``/``ae``) builds
  with the family in 2D and 3D, runs forward and its training loss backward (every trainable
  parameter of each training stage gets a gradient) and predicts at the input size;
* :func:`check_context`: built with a context vector the encoder reacts to it, and called
  without one it raises :class:`~flemme_core.errors.ShapeError` (skipped for a family that
  declares ``supports_context = False``);
* :func:`check_common_keys`: the common keys do what they say. ``norm`` and ``act``: every
  value the family accepts builds a different network (a family that accepts ``norm: group``
  and builds the same thing as ``norm: batch`` ignores it); a value it cannot honour must be
  refused with a ``ConfigError``. ``dropout`` and ``drop_path``: a non-zero rate makes two
  training-mode passes differ and leaves eval mode deterministic (or is refused);
* :func:`check_save_load`: a saved model loads back bit-exact, from the file alone.

What a family's registration tells the kit (``register(name, factory, description, **metadata)``):
``example={...}`` the encoder options its smallest build needs (a fusion's branches), and
``dims=(2,)`` for a 2D-only family. Architectures registered with ``encoder=False`` take no
encoder family and are not run; one registered with ``requires="..."`` cannot be built from
options alone (a trained file) and is skipped with that reason; ``example={...}`` gives the
``arch_options`` of its smallest build, where the string ``"{encoder}"`` stands for the
encoder config under test (``distill``'s teacher).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, ShapeError

__all__ = [
    "ConformanceError",
    "check_architectures",
    "check_common_keys",
    "check_context",
    "check_contract",
    "check_family",
    "check_reloads_without",
    "check_save_load",
    "conformance_tests",
    "encoder_config",
    "family_dims",
]

#: image side per dimension; small enough for every shipped family's shape rules at 2 levels.
SIZES = {2: 32, 3: 16}
NORMS = ("batch", "instance", "group", "layer", "none")
ACTS = ("relu", "gelu", "silu", "leakyrelu", "tanh")


class ConformanceError(AssertionError):
    """A family breaks the encoder contract: the message names the family, check and rule."""


def _fail(family: str, check: str, message: str) -> ConformanceError:
    return ConformanceError(f"encoder family {family!r} fails {check}: {message}")


def _registry():
    from .registry import get_registry

    return get_registry()


def encoder_config(family: str, **overrides: Any) -> dict[str, Any]:
    """The smallest encoder config of ``family``: two levels (16, 32), one block each, plus the
    options the family declared with ``example=`` and ``overrides``."""
    example = _registry().get("encoder", family).metadata.get("example") or {}
    return {"name": family, "channels": [16, 32], "num_blocks": 1, **copy.deepcopy(example), **overrides}


def family_dims(family: str) -> tuple[int, ...]:
    """The dimensions a family declares (``dims=`` at registration; default 2D and 3D)."""
    dims = _registry().get("encoder", family).metadata.get("dims", (2, 3))
    return tuple(dims) if isinstance(dims, Iterable) else (int(dims),)


def _model(family: str, arch: str = "unet", dims: int = 2, arch_options: dict[str, Any] | None = None,
           **encoder: Any):
    from .build import build_model
    from .training.setup import architecture_task

    # two classes for a task with class labels; otherwise the output is an image like the input
    labels = architecture_task(arch, arch_options).labels
    return build_model({"arch": arch, "encoder": encoder_config(family, **encoder), "dims": dims,
                        "image_size": SIZES[dims], "in_channels": 1, "out_channels": 2 if labels else 1,
                        "arch_options": arch_options or {}})


def _encoder(family: str, dims: int = 2, context_dim: int | None = None, **encoder: Any):
    from .build import _encoder_builder
    from .config import model_config_from_dict

    cfg = model_config_from_dict({"arch": "unet", "encoder": encoder_config(family, **encoder), "dims": dims,
                                  "image_size": SIZES[dims], "in_channels": 1, "out_channels": 2})
    return _encoder_builder(cfg)(context_dim=context_dim)


def _input(dims: int, batch: int = 2, channels: int = 1):
    import torch

    return torch.randn(batch, channels, *[SIZES[dims]] * dims)


# -- the checks ---------------------------------------------------------------------------
def check_contract(family: str, dims: Sequence[int] | None = None) -> None:
    """Features fine to coarse, channels-first, with the declared channels and strides."""
    import torch

    from .encoder import Encoder

    for d in dims or family_dims(family):
        enc = _encoder(family, d).eval()
        if not isinstance(enc, Encoder):
            raise _fail(family, "the contract", f"its factory returned {type(enc).__name__}, not an Encoder")
        with torch.no_grad():
            feats = enc(_input(d, 1))
        n = len(enc.feature_channels)
        if not (len(feats) == n == len(enc.feature_strides)):
            raise _fail(family, "the contract", f"{len(feats)} features for {n} declared channels and "
                                                f"{len(enc.feature_strides)} strides ({d}D)")
        if list(enc.feature_strides) != sorted(enc.feature_strides):
            raise _fail(family, "the contract", f"features must go fine to coarse, strides {enc.feature_strides}")
        for level, (f, c, s) in enumerate(zip(feats, enc.feature_channels, enc.feature_strides)):
            want = (1, c, *[SIZES[d] // s] * d)
            if tuple(f.shape) != want:
                raise _fail(family, "the contract", f"level {level} ({d}D) has shape {tuple(f.shape)}, but "
                                                    f"channels {c} and stride {s} declare {want}")


def _arch_options(component: Any, family: str) -> dict[str, Any] | None:
    example = copy.deepcopy(component.metadata.get("example") or {})

    def fill(value: Any) -> Any:
        if value == "{encoder}":
            return encoder_config(family)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return fill(example)


def _target(model: Any, x: Any) -> Any:
    from .tasks import task_of

    return task_of(model).example_target(x, model.config.out_channels)


def check_architectures(family: str, archs: Sequence[str] | None = None, dims: Sequence[int] | None = None) -> None:
    """Every installed architecture builds with the family in 2D and 3D, trains one step of each
    training stage (every trainable parameter gets a gradient) and predicts at the input size."""
    import torch

    from .build import loss_spec
    from .losses import build_loss

    registry = _registry()
    components = registry.components("architecture")
    for arch in archs or sorted(components):
        component = registry.get("architecture", arch)
        if component.metadata.get("encoder", True) is False or component.metadata.get("requires"):
            continue
        for d in dims or family_dims(family):
            where = f"architecture {arch!r} ({d}D)"
            try:
                model = _model(family, arch, d, _arch_options(component, family))
            except (ConfigError, ShapeError) as exc:
                if "supports_context is False" in str(exc):
                    continue  # the family declares it cannot condition its blocks; this architecture needs it
                raise _fail(family, where, f"does not build: {exc}") from exc
            x = _input(d)
            batch = {"image": x, "label": _target(model, x)}
            criterion = build_loss(loss_spec(model), model.config.out_channels, d)
            for stage in model.training_stages():
                model.train()
                model.begin_stage(stage)
                model.zero_grad(set_to_none=True)
                loss, _ = model.training_loss(batch, criterion)
                if not torch.isfinite(loss):
                    raise _fail(family, where, f"stage {stage!r} gave a non-finite loss {loss.item()}")
                loss.backward()
                idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
                if not getattr(model.options, "skip", getattr(model, "skip", False)):
                    # without skips only the bottleneck feeds the decoder: side levels may idle,
                    # but everything outside the encoder, and the encoder itself, must train
                    if idle and not any(p.grad is not None for p in model.encoder.parameters()):
                        raise _fail(family, where, f"stage {stage!r}: no encoder parameter got a gradient")
                    idle = [n for n in idle if not n.startswith("encoder.")]
                if idle:
                    raise _fail(family, where, f"stage {stage!r}: parameters that got no gradient: {idle[:4]}")
            model.eval()
            out = model.predict(x)
            if tuple(out.shape[2:]) != tuple(x.shape[2:]) or out.shape[0] != x.shape[0]:
                raise _fail(family, where, f"predict gave {tuple(out.shape)} for an input {tuple(x.shape)}")


def check_context(family: str, dims: Sequence[int] | None = None) -> None:
    """Built with a context vector the encoder reacts to it; called without, ShapeError."""
    import torch

    for d in dims or family_dims(family):
        probe = _encoder(family, d)
        if not getattr(probe, "supports_context", True):
            # declared: building it with a context is refused by the builder, in one line
            try:
                _encoder(family, d, context_dim=8)
            except ConfigError as exc:
                if "\n" not in str(exc):
                    return
            raise _fail(family, "the context rule", "it declares supports_context = False, so building it with a "
                        "context vector must be refused in one ConfigError line")
        enc = _encoder(family, d, context_dim=8).eval()
        x = _input(d)
        with torch.no_grad():
            a, b = enc(x, torch.zeros(2, 8))[-1], enc(x, torch.ones(2, 8))[-1]
        if torch.allclose(a, b):
            raise _fail(family, "the context rule", f"built with context_dim 8, its output ({d}D) does not change "
                        "with the context; inject it in every block (ContextInjection)")
        try:
            with torch.no_grad():
                enc(x)
        except ShapeError:
            continue
        raise _fail(family, "the context rule", "built with a context vector and called without one, it must raise "
                    "ShapeError (ContextInjection does), not silently run unconditioned")


def _signature(module: Any) -> str:
    return repr(module)


def _accepted(family: str, dims: int, **encoder: Any) -> Any | None:
    try:
        return _encoder(family, dims, **encoder)
    except ConfigError:
        return None


def _choice_is_honoured(family: str, key: str, values: Sequence[str], dims: int) -> None:
    built = {v: enc for v in values if (enc := _accepted(family, dims, **{key: v})) is not None}
    if not built:
        raise _fail(family, f"the common key {key!r}", f"it refuses every value of {', '.join(values)}")
    seen: dict[str, str] = {}
    for value, enc in built.items():
        sig = _signature(enc)
        if sig in seen:
            raise _fail(family, f"the common key {key!r}", f"{key}: {value} builds the same network as "
                        f"{key}: {seen[sig]}; honour the value or refuse it with a ConfigError")
        seen[sig] = value


def _rate_is_honoured(family: str, key: str, dims: int) -> None:
    import torch

    enc = _accepted(family, dims, **{key: 0.5})
    if enc is None:
        return  # refused: honest
    x = _input(dims)
    enc.train()
    torch.manual_seed(0)
    a = enc(x)[-1]
    torch.manual_seed(1)
    b = enc(x)[-1]
    if torch.allclose(a, b):
        raise _fail(family, f"the common key {key!r}", f"{key}: 0.5 changes nothing in training mode; apply it "
                    "(or refuse a rate the family cannot apply with a ConfigError)")
    enc.eval()
    with torch.no_grad():
        if not torch.equal(enc(x)[-1], enc(x)[-1]):
            raise _fail(family, f"the common key {key!r}", f"with {key}: 0.5 eval mode is not deterministic")


def check_common_keys(family: str, dims: Sequence[int] | None = None) -> None:
    """``norm``, ``act``, ``dropout`` and ``drop_path`` are honoured or refused, never ignored."""
    d = (dims or family_dims(family))[0]
    _choice_is_honoured(family, "norm", NORMS, d)
    _choice_is_honoured(family, "act", ACTS, d)
    for key in ("dropout", "drop_path"):
        _rate_is_honoured(family, key, d)


def check_save_load(family: str, dims: Sequence[int] | None = None) -> None:
    """save_model / load_model round trip: same tensors, same output, rebuilt from the file alone."""
    import torch

    from .checkpoint import load_model, save_model

    for d in dims or family_dims(family):
        model = _model(family, "unet", d)
        model.train()
        model(_input(d))  # running statistics become part of the round trip
        model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = save_model(model, Path(tmp) / "m.safetensors")
            again = load_model(path).eval()
        x = _input(d, 1)
        with torch.no_grad():
            if not torch.equal(model(x), again(x)):
                raise _fail(family, "save/load", f"the loaded model ({d}D) computes something else")


def check_reloads_without(model: Any, files: Iterable[str | Path], x: Any, folder: str | Path) -> None:
    """Save ``model`` in ``folder``, delete ``files`` (the published weights it was built from),
    load it back: it must compute the same as ``model`` on ``x``, bit-exact. A model whose
    config names a weights file must not need that file once saved (a checkpoint travels alone)."""
    import torch

    from .checkpoint import load_model, save_model

    model.eval()
    path = save_model(model, Path(folder) / "m.safetensors")
    for file in files:
        Path(file).unlink()
    again = load_model(path).eval()
    with torch.no_grad():
        if not torch.equal(model(x), again(x)):
            raise AssertionError(f"the model loaded from {path} without {[str(f) for f in files]} computes "
                                 "something else")


CHECKS: dict[str, Callable[..., None]] = {
    "contract": check_contract, "architectures": check_architectures, "context": check_context,
    "common_keys": check_common_keys, "save_load": check_save_load,
}


def check_family(family: str, *, dims: Sequence[int] | None = None, archs: Sequence[str] | None = None,
                 skip: Sequence[str] = ()) -> None:
    """Run every conformance check on an installed (or explicitly registered) family.

    ``dims`` defaults to what the family declares, ``archs`` to every installed architecture;
    ``skip`` names checks of :data:`CHECKS` not to run (say why in your test).
    """
    import torch

    _registry().get("encoder", family)  # unknown name: one line listing close matches
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {sorted(CHECKS)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, check in CHECKS.items():
            if name in skip:
                continue
            if name == "architectures":
                check(family, archs=archs, dims=dims)
            else:
                check(family, dims=dims)
    finally:
        torch.set_num_threads(threads)


def conformance_tests(*families: str, archs: Sequence[str] = ("unet", "ae")) -> tuple[Callable[..., None], ...]:
    """The two pytest tests a plugin's suite runs for its families, in one line::

        test_conformance, test_conformance_every_architecture = conformance_tests("convnext")

    the kit with ``archs`` (the core architectures: fast, in the default run), and with every
    installed architecture (marked ``slow``)."""
    import pytest

    @pytest.mark.parametrize("family", families)
    def test_conformance(family: str) -> None:
        check_family(family, archs=archs)

    @pytest.mark.slow
    @pytest.mark.parametrize("family", families)
    def test_conformance_every_architecture(family: str) -> None:
        check_family(family)

    return test_conformance, test_conformance_every_architecture
