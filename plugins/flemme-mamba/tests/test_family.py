"""The mamba family inside the core architectures: builds through the registry, 2D and 3D,
unet and ae, every scan mode, context injection, option errors, checkpoints, backends."""

from __future__ import annotations

import pytest
import torch

from flemme_core import build_model, load_model, save_model
from flemme_core.build import summarize
from flemme_core.errors import ConfigError
from flemme_core.registry import get_registry


def config(arch: str = "unet", dims: int = 2, size: int = 16, **encoder) -> dict:
    enc = {"name": "mamba", "channels": [8, 16], "num_blocks": 1, "d_state": 8, "scan": "cross+flip"}
    enc.update(encoder)
    return {"arch": arch, "dims": dims, "image_size": size, "in_channels": 1, "out_channels": 2, "encoder": enc}


def test_registered_through_the_entry_point():
    comp = get_registry().components("encoder")["mamba"]
    assert comp.provider.name == "flemme-mamba"
    assert comp.factory == "flemme_mamba.family:encoder"


@pytest.mark.parametrize("arch", ["unet", "ae"])
@pytest.mark.parametrize("dims,size", [(2, 16), (3, 8)])
def test_core_architectures_forward_backward(arch, dims, size):
    model = build_model(config(arch, dims, size))
    x = torch.randn(2, 1, *[size] * dims)
    out = model(x)
    assert out.shape == (2, 2, *[size] * dims)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    feats = model.encoder(x)
    assert [f.shape[1] for f in feats] == [8, 16]
    assert [f.shape[2] for f in feats] == [size // 2, size // 4]  # patch 2, then one merge


@pytest.mark.parametrize("scan", ["single", "single+flip", "cross"])
def test_every_scan_mode_builds_2d_and_3d(scan):
    for dims, size in [(2, 16), (3, 8)]:
        model = build_model(config("unet", dims, size, scan=scan))
        ssm = model.encoder.stages[0].blocks[0].ssm
        k = {"single": 1, "single+flip": 2, "cross": 2 if dims == 2 else 6}[scan]
        assert ssm.A_log.shape == (k * ssm.inner, 8)
        assert model(torch.randn(1, 1, *[size] * dims)).shape == (1, 2, *[size] * dims)


def test_parameter_layouts_follow_mamba_ssm():
    model = build_model(config(channels=[16, 32], d_state=16, expand=2.0))
    ssm = model.encoder.stages[0].blocks[0].ssm
    k, inner, rank = 4, 32, 1
    shapes = {name: tuple(p.shape) for name, p in ssm.named_parameters()}
    assert shapes["x_proj_weight"] == (k, rank + 2 * 16, inner)
    assert shapes["dt_projs_weight"] == (k, inner, rank)
    assert shapes["dt_projs_bias"] == (k, inner)
    assert shapes["A_log"] == (k * inner, 16) and shapes["D"] == (k * inner,)
    assert torch.allclose(-torch.exp(ssm.A_log[0]), -torch.arange(1, 17.0))  # S4D-real init
    dt = torch.nn.functional.softplus(ssm.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6  # Mamba's dt init range


def test_context_injected_in_every_block():
    cfg = config("unet")
    model = build_model(cfg)
    from flemme_core.architectures.encoder_decoder import UNet
    from flemme_core.build import _encoder_builder
    from flemme_core.config import model_config_from_dict

    mc = model_config_from_dict(cfg)
    build = _encoder_builder(mc)
    net = UNet(mc, lambda **kw: build(**{**kw, "context_dim": 4})).eval()
    blocks = [m for m in net.modules() if type(m).__name__ == "MambaBlock"]
    assert blocks and all(b.context is not None for b in blocks)
    x = torch.randn(2, 1, 16, 16)
    a, b = net(x, torch.zeros(2, 4)), net(x, torch.ones(2, 4))
    assert not torch.allclose(a, b)
    assert model.encoder.stages[0].blocks[0].context is None


@pytest.mark.parametrize("key,value,match", [
    ("d_conv", 4, "odd"), ("scan", "crosss", "did you mean 'cross'"), ("backend", "cuda", "available"),
    ("dt_rank", "big", "dt_rank"), ("d_state", 0, "d_state"), ("mlp_ratio", -1.0, "mlp_ratio"),
    ("expand", 0, "expand"), ("dstate", 8, "did you mean 'd_state'"), ("norm", "layr", "did you mean 'layer'"),
])
def test_bad_options_are_one_line_config_errors(key, value, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_model(config(**{key: value}))
    assert "\n" not in str(err.value)


def test_summary_reports_the_backend():
    s = summarize(build_model(config()))
    assert s["backend"].startswith("cpu: flemme C++ CPU scan")
    s = summarize(build_model(config(backend="torch")))
    assert s["backend"] == "PyTorch chunked scan"


def test_checkpoint_round_trip_and_backend_independence(tmp_path):
    model = build_model(config(dims=3, size=8, scan="cross")).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        for p in model.parameters():  # move away from the init so the test sees the weights
            p.add_(0.01 * torch.randn_like(p))
        expected = model(x)
    path = save_model(model, tmp_path / "mamba.safetensors")
    loaded = load_model(path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    # the same file into the other backend: identical parameters, same function
    other = build_model(config(dims=3, size=8, scan="cross", backend="torch")).eval()
    from safetensors.torch import load_model as st_load

    st_load(other, str(path))
    with torch.no_grad():
        assert torch.allclose(other(x), expected, atol=1e-5)


def test_cli_build_without_gpu():
    from click.testing import CliRunner

    from flemme_core.cli import main

    result = CliRunner().invoke(main, ["build", "--encoder", "mamba", "--arch", "unet", "--image-size", "32",
                                       "--channels", "8,16"])
    assert result.exit_code == 0, result.output
    assert "backend cpu: flemme C++ CPU scan" in result.output


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_model_moved_to_bfloat16_runs(backend):
    model = build_model(config(backend=backend)).to(torch.bfloat16)
    out = model(torch.randn(1, 1, 16, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_large_d_state_builds_on_the_torch_scan():
    model = build_model(config(d_state=300))
    assert "PyTorch chunked scan (d_state 300 > 256" in model.encoder.backend
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    with pytest.raises(ConfigError, match="'cpp' takes d_state up to 256, got 300"):
        build_model(config(d_state=300, backend="cpp"))
