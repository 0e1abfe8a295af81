"""The CLI as a user meets it: working commands, and every bad input as one line + exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from flemme_core.cli import main


def run(*args: str):
    result = CliRunner().invoke(main, list(args))
    return result


def test_build_defaults_printed():
    r = run("build", "--encoder", "tiny", "--arch", "unet")
    assert r.exit_code == 0, r.output
    assert "128×128, 1 channel(s) in, 2 out" in r.output
    assert "(1, 2, 128, 128)" in r.output and "total stride 8" in r.output


def test_build_3d_json():
    r = run("build", "--encoder", "tiny", "--arch", "unet", "--dims", "3", "--image-size", "32",
            "--in-channels", "1", "--out-channels", "3", "--channels", "8,16", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["output_shapes"] == [[1, 3, 32, 32, 32]]
    assert [lvl["shape"] for lvl in summary["levels"]] == [[1, 8, 32, 32, 32], [1, 16, 16, 16, 16]]


def test_build_dims_3_alone_takes_the_default_size_per_axis():
    # `flemme build --encoder X --arch unet --dims 3` (the README's line) must not fail on the 2D default size
    r = run("build", "--encoder", "tiny", "--arch", "unet", "--dims", "3", "--channels", "4,8", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["output_shapes"] == [[1, 2, 128, 128, 128]]


def test_build_from_config_save_and_info(tmp_path):
    path = tmp_path / "model.safetensors"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model:\n  arch: unet\n  image_size: 32\n  encoder: {name: tiny, channels: [8, 16]}\n")
    r = run("build", "--config", str(cfg), "--save", str(path))
    assert r.exit_code == 0, r.output
    r = run("info", str(path))
    assert r.exit_code == 0, r.output
    assert "unet with encoder tiny" in r.output and "flemme-core 0.1.0" in r.output
    params = json.loads(run("info", str(path), "--json").output)["parameters"]
    assert f"{params:,}" in r.output


def test_set_override_reaches_family_options():
    r = run("build", "--encoder", "tiny", "--set", "encoder.kernel_size=5", "--set", "encoder.channels=[8,16]", "--image-size", "16",
            "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["resolved_encoder"]["options"] == {"kernel_size": 5}


def test_list_with_wildcard_and_kind():
    r = run("list", "encoders", "ti*")
    assert r.exit_code == 0
    assert "tiny" in r.output and "unet" not in r.output
    r = run("list", "losses", "dice*", "--json")
    names = {c["name"] for c in json.loads(r.output)["components"]}
    assert names == {"dice", "dice_ce"}


def test_plugins_requirements():
    r = run("plugins", "--requirements")
    assert r.exit_code == 0
    assert "flemme-core==0.1.0" in r.output.splitlines()


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BAD = [
    (["build", "--encoder", "tinyy"], r"unknown encoder 'tinyy'; did you mean 'tiny'"),
    (["build", "--arch", "unnet"], r"unknown architecture 'unnet'; did you mean 'unet'"),
    (["build", "--image-size", "100"], r"image size 100×100 must be divisible by the total stride 8.*--image-size 104"),
    (["build", "--dims", "4"], r"model.dims must be 2 or 3"),
    (["build", "--dims", "3", "--image-size", "64,64"], r"image_size has 2 values but dims is 3"),
    (["build", "--set", "encoder.kernel_sise=3"], r"did you mean 'kernel_size'"),
    (["build", "--set", "encoder.kernel_size=4"], r"model.encoder \(tiny options\): kernel_size must be odd"),
    (["build", "--channels", "32,-64"], r"channels must be positive integers"),
    (["build", "--norm", "btach"], r"unknown value for normalisation: 'btach'; did you mean 'batch'"),
    (["build", "--act", "rellu"], r"unknown activation 'rellu'; did you mean 'relu'"),
    (["build", "--set", "encoder.dropout=1.5"], r"dropout must be a number in \[0, 1\)"),
    (["build", "--batch-size", "0"], r"batch size must be at least 1"),
    (["build", "--set", "loss=dice_cee"], r"unknown loss 'dice_cee'; did you mean 'dice_ce'"),
    (["build", "--set", "arch_options.supervised=true"], r"key in model.arch_options \(unet\): 'supervised'"),
    (["build", "--set", "imagesize=64"], r"unknown key in model: 'imagesize'; did you mean 'image_size'"),
    (["build", "--set", "encoder.channels"], r"--set expects key=value"),
    (["build", "--config", "missing.yaml"], r"config file 'missing.yaml' does not exist"),
    (["build", "--in-channels", "0"], r"in_channels must be a positive integer"),
    (["list", "encodrs"], r"unknown component kind 'encodrs'; did you mean 'encoders'"),
    (["info", "nope.safetensors"], r"checkpoint 'nope.safetensors' does not exist"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_nonzero(args, message):
    if args[0] == "build" and "--encoder" not in args:
        args = [*args, "--encoder", "tiny"]  # the test suite's family, whatever else is installed
    r = run(*args)
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    import re

    assert re.search(message, errors[0]), errors[0]


@pytest.mark.parametrize("content,message", [
    ("model: [unclosed", r"not valid YAML at line"),
    ("", r"is empty"),
    ("- a\n- b\n", r"must hold a mapping"),
    ("model:\n  encoder: {name: tiny, channels: abc}\n", r"channels must be integers"),
])
def test_bad_config_files(tmp_path, content, message):
    r = run("build", "--config", _write(tmp_path, "c.yaml", content))
    assert r.exit_code != 0 and "Traceback" not in r.output
    import re

    assert re.search(message, r.output), r.output


def test_info_on_corrupt_and_foreign_files(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    r = run("info", str(corrupt))
    assert r.exit_code != 0 and "truncated or corrupt" in r.output
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    r = run("info", str(foreign))
    assert r.exit_code != 0 and "not a flemme model checkpoint" in r.output


def test_failed_build_writes_nothing(tmp_path):
    target = tmp_path / "m.safetensors"
    r = run("build", "--image-size", "100", "--save", str(target))
    assert r.exit_code != 0
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_console_script_exit_code_and_no_traceback():
    """The installed `flemme` entry point, as a shell user runs it."""
    proc = subprocess.run([sys.executable, "-m", "flemme_core", "build", "--encoder", "mamb"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: unknown encoder 'mamb'") and "Traceback" not in proc.stderr


def test_help_and_list_do_not_import_torch():
    code = ("import sys; from flemme_core.cli import main\n"
            "from click.testing import CliRunner\n"
            "r = CliRunner().invoke(main, ['list']); assert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0\n"
            "heavy = [m for m in ('torch', 'monai', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
