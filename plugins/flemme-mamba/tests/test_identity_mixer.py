"""``mixer: identity`` (the No-Mamba control of Isensee et al., 2024): the selective scan
goes, every other part of the block stays, and the CLI builds it."""

from __future__ import annotations

import pytest
import torch

from flemme_core import build_model
from flemme_core.ablation import check_identity_mixer
from flemme_core.errors import ConfigError


@pytest.mark.parametrize("ssm", ["mamba1", "mamba2"])
@pytest.mark.parametrize("dims,size", [(2, 16), (3, 8)])
def test_identity_removes_only_the_scan(ssm, dims, size):
    result = check_identity_mixer("mamba", dims=dims, size=size, d_state=8, ssm=ssm)
    removed = {n.rsplit(".", 1)[-1] for n in result["removed"]}
    assert removed == ({"x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_log", "D"} if ssm == "mamba1"
                       else {"x_proj_weight", "dt_bias", "A_log", "D"})
    kept = {n.split("blocks.0.", 1)[-1] for n in result["kept"] if ".blocks.0." in n}
    # projections, conv, gate norm, block norms, MLP: everything but the scan
    assert {"ssm.in_proj.weight", "ssm.conv.weight", "ssm.out_norm.weight", "ssm.out_proj.weight",
            "norm1.weight", "norm2.weight", "mlp.linear1.weight"} <= kept


def test_identity_keeps_context_injection_and_reacts_to_it():
    cfg = {"arch": "unet", "dims": 2, "image_size": 16, "in_channels": 1, "out_channels": 2,
           "encoder": {"name": "mamba", "channels": [8, 16], "num_blocks": 1, "mixer": "identity"}}
    model = build_model(cfg)
    blocks = [m for m in model.modules() if type(m).__name__ == "MambaBlock"]
    assert blocks and all(type(b.ssm).__name__ == "IdentityScanND" for b in blocks)
    assert model.encoder.backend == "no scan (mixer: identity)"
    from flemme_core.architectures.encoder_decoder import UNet
    from flemme_core.build import _encoder_builder
    from flemme_core.config import model_config_from_dict

    mc = model_config_from_dict(cfg)
    build = _encoder_builder(mc)
    net = UNet(mc, lambda **kw: build(**{**kw, "context_dim": 4})).eval()
    assert all(b.context is not None for b in net.modules() if type(b).__name__ == "MambaBlock")
    x = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(net(x, torch.zeros(2, 4)), net(x, torch.ones(2, 4)))


def test_unknown_mixer_is_one_line():
    with pytest.raises(ConfigError, match="does not support mixer: attention; it builds scan or identity"):
        build_model({"arch": "unet", "dims": 2, "image_size": 16,
                     "encoder": {"name": "mamba", "channels": [8, 16], "mixer": "attention"}})


def test_cli_build_with_identity_mixer(tmp_path):
    from click.testing import CliRunner

    from flemme_core.cli import main

    args = ["build", "--encoder", "mamba", "--arch", "unet", "--image-size", "32", "--channels", "8,16"]
    normal = CliRunner().invoke(main, args)
    ablated = CliRunner().invoke(main, [*args, "--set", "encoder.mixer=identity"])
    assert ablated.exit_code == 0, ablated.output
    assert "no scan (mixer: identity)" in ablated.output
    assert normal.output != ablated.output  # fewer parameters
    refused = CliRunner().invoke(main, ["build", "--encoder", "cnn", "--arch", "unet", "--image-size", "32",
                                        "--set", "encoder.mixer=identity"])
    assert refused.exit_code != 0
    assert "has no token mixer to replace" in refused.output and "Traceback" not in refused.output
