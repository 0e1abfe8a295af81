"""Every installed encoder family works as vae, ddpm and sdm in 2D and 3D, and its blocks
really receive the diffusion context (a family that ignores the context fails here)."""

from __future__ import annotations

import pytest
import torch
from diffusion_helpers import build_or_skip, families

from flemme_core.encoder import ContextInjection

FAMILIES = families()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("arch", ["vae", "ddpm", "sdm"])
@pytest.mark.parametrize("family", FAMILIES)
def test_generative_arch_forward_backward(family, arch, dims):
    model = build_or_skip(arch, family, dims, **({"timesteps": 10} if arch != "vae" else {}))
    size = 32 if dims == 2 else 16
    batch = {"image": torch.rand(2, 1, *[size] * dims), "label": torch.rand(2, 1, *[size] * dims)}
    loss, _ = model.training_loss(batch, torch.nn.MSELoss())
    assert torch.isfinite(loss)
    loss.backward()
    # The encoder's own unused parameters are the family's business; everything this plugin adds must learn.
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None and not n.startswith(("encoder.", "cond_encoder."))]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    if arch == "sdm":
        out = model.predict_with_uncertainty(batch["image"][:1], n=1, steps=1)[0]
    else:
        out = model.sample(1, steps=1) if arch != "vae" else model.sample(1)
    assert out.shape == (1, 1, *[size] * dims) and torch.isfinite(out).all()


def _stages(model) -> list[tuple[str, torch.nn.Module]]:
    stages = [(f"encoder.stages.{i}", s) for i, s in enumerate(getattr(model.encoder, "stages", []))]
    return stages + [(f"decoder.stages.{i}", s) for i, s in enumerate(model.decoder.stages)]


@pytest.mark.parametrize("family", FAMILIES)
def test_context_path_is_real(family):
    """Output changes with the timestep and the class; every stage reacts to the context; the
    time embedding and every block's injection get non-zero gradients."""
    model = build_or_skip("ddpm", family, 2, num_classes=3, timesteps=100, cond_drop=0.0).eval()
    x = torch.randn(2, 1, 32, 32)
    base = model(x, torch.tensor([5, 5]), torch.tensor([0.0, 0.0]))
    assert not torch.allclose(base, model(x, torch.tensor([80, 80]), torch.tensor([0.0, 0.0])), atol=1e-6)
    assert not torch.allclose(base, model(x, torch.tensor([5, 5]), torch.tensor([2.0, 2.0])), atol=1e-6)

    # Stage by stage: same input features, a different context -> a different output.
    captured: dict[str, tuple] = {}
    hooks = [s.register_forward_pre_hook(lambda m, args, name=name: captured.setdefault(name, args))
             for name, s in _stages(model)]
    model(x, torch.tensor([5, 5]))
    for h in hooks:
        h.remove()
    assert captured, "no stage ran"
    other = model.embed(torch.tensor([90, 90]), 2, torch.tensor([1.0, 1.0]))
    for name, stage in _stages(model):
        feats, context = captured[name][0], captured[name][1]
        assert context is not None, f"{name} was called without the context"
        with torch.no_grad():
            assert not torch.allclose(stage(feats, context), stage(feats, other), atol=1e-6), \
                f"{name} ignores the context vector"
        assert any(isinstance(m, ContextInjection) for m in stage.modules()), f"{name} has no ContextInjection"

    # Gradients: the time-embedding MLP and every injection receive signal from the loss.
    model.train()
    loss, _ = model.training_loss({"image": torch.rand(2, 1, 32, 32), "label": torch.tensor([0, 1])},
                                  torch.nn.MSELoss())
    loss.backward()
    for name, p in model.embed.time.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"time embedding {name} got no gradient"
    injections = [(n, m) for n, m in model.named_modules() if isinstance(m, ContextInjection)]
    assert injections
    dead = [n for n, m in injections if m.proj.weight.grad is None or m.proj.weight.grad.abs().sum() == 0]
    assert not dead, f"blocks whose context injection gets no gradient: {dead[:5]}"
