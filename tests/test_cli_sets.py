"""One ``--set KEY=VALUE`` parser for every command, and ``--data`` with ``--set data.*``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from flemme_core.cli import main
from flemme_core.errors import ConfigError
from flemme_core.overrides import parse_set
from flemme_core.training.config import load_run_config


@pytest.mark.parametrize(("item", "expected"), [
    ("encoder.block=res_conv", ("encoder.block", "res_conv")),
    ("train.lr=3e-4", ("train.lr", 3e-4)),
    (" data.num_classes = 2 ", ("data.num_classes", 2)),
    ("encoder.channels=[8,16]", ("encoder.channels", [8, 16])),
    ("train.clip=null", ("train.clip", None)),
    ("arch_options.supervised=true", ("arch_options.supervised", True)),
    ("data.base_dir=a=b", ("data.base_dir", "a=b")),
    ("encoder.name=[unclosed", ("encoder.name", "[unclosed")),
])
def test_parse_set(item, expected):
    assert parse_set(item) == expected


@pytest.mark.parametrize("item", ["encoder.block", "=3", ""])
def test_malformed_set_is_one_line(item):
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_set(item)


@pytest.mark.parametrize("command", [["build", "--encoder", "tiny"], ["train", "--data", "synthetic-2d"],
                                     ["eval", "{ckpt}", "--data", "synthetic-2d"]])
def test_every_command_parses_set_alike(command, tmp_path):
    from flemme_core import build_model, save_model

    ckpt = save_model(build_model({"arch": "unet", "encoder": {"name": "tiny", "channels": [4, 8]}, "image_size": 16}),
                      tmp_path / "m.safetensors")
    command = [str(ckpt) if c == "{ckpt}" else c for c in command]
    result = CliRunner().invoke(main, [*command, "--set", "encoder.block"])
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(lines) == 1 and "--set expects key=value" in lines[0], result.output


def test_data_flag_keeps_set_data_keys(tmp_path):
    """`flemme train --data IMAGES:LABELS --set data.num_classes=2`: --data once dropped every
    data-source key, the one just set included ("data.num_classes is required")."""
    run = load_run_config(None, sets=["data.num_classes=2", "data.batch_size=3"],
                          data_source={"images": "imgs", "labels": "labs"})
    assert run.data == {"images": "imgs", "labels": "labs", "num_classes": 2, "batch_size": 3}


def test_data_flag_replaces_the_config_files_source(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  preset: synthetic-2d\n  options: {size: [32, 32]}\n  batch_size: 4\n")
    run = load_run_config(path, data_source={"datalist": "d.json"}, sets=["data.num_classes=3"])
    assert run.data == {"datalist": "d.json", "batch_size": 4, "num_classes": 3}
