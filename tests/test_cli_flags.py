"""Flags and configs do what they say (issue 19): --steps on a staged run, a family change from
the command line, --set key=null, default run names, the collision message, build with data:."""

from __future__ import annotations

import json
import types

import pytest
import yaml
from click.testing import CliRunner
from model_configs import requires_encoders
from train_helpers import TINY_2D, config, write_config

import flemme_core
from flemme_core.architectures.encoder_decoder import UNet
from flemme_core.cli import main
from flemme_core.hookspecs import hookimpl
from flemme_core.training.config import load_run_config

SMALL = config(TINY_2D, train={"steps": 6, "val_every": 0, "lr": 0.01},
               data={"options": {"num_train": 4, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32]})


class Staged(UNet):
    def training_stages(self):
        return ["first", "second"]


plugin = types.SimpleNamespace()


@hookimpl
def register_architectures(register):
    register("test_staged_flags", Staged, "test", task="segmentation")


plugin.register_architectures = register_architectures


@pytest.fixture
def staged():
    flemme_core.register_plugin(plugin, name="staged-flags")
    yield
    flemme_core.unregister_plugin(plugin)


def test_steps_flag_is_the_total_of_a_staged_run_and_config_yaml_says_so(tmp_path, staged):
    cfg = config(SMALL, model={"arch": "test_staged_flags"},
                 train={"stages": {"first": {"steps": 9}, "second": {"steps": 3}}})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert "--steps 4 is the total over the 2 stages" in result.output and "first 3, second 1" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert saved["steps"] == 4 and saved["stages"]["first"]["steps"] == 3 and saved["stages"]["second"]["steps"] == 1


def test_a_staged_config_without_flags_runs_and_records_its_own_steps(tmp_path, staged):
    cfg = config(SMALL, model={"arch": "test_staged_flags"}, train={"steps": 2})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert saved["steps"] == 4 and saved["stages"] == {"first": {"steps": 2}, "second": {"steps": 2}}
    too_few = CliRunner().invoke(main, ["train", str(path), "-o", str(tmp_path / "r2"), "--steps", "1"])
    assert too_few.exit_code != 0 and "fewer than the 2 stages" in too_few.output


def test_changing_the_family_drops_the_previous_familys_options_and_says_so(tmp_path):
    cfg = config(SMALL, model={"encoder": {"name": "cnn", "channels": [8, 16], "norm": "instance",
                                           "block": "res_conv", "dropout": 0.1}})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    run = load_run_config(path, {"model.encoder.name": "swin"})
    assert run.model["encoder"] == {"name": "swin", "channels": [8, 16], "dropout": 0.1}
    assert "cnn -> swin" in run.notes[0] and "block=res_conv" in run.notes[0]
    same = load_run_config(path, {"model.encoder.name": "cnn"})  # same family: nothing dropped
    assert same.model["encoder"]["block"] == "res_conv" and not same.notes
    removed = load_run_config(path, sets=["encoder.block=null", "data.patch_size=null", "train.clip=null"])
    assert "block" not in removed.model["encoder"] and "patch_size" not in removed.data
    assert removed.train.clip is None  # under train: null is a value (no clipping)


@requires_encoders("cnn", "vit")
def test_build_with_a_new_family_and_null(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", config(SMALL, model={"encoder": {"name": "cnn", "block": "res_conv",
                                                                                "norm": "instance"}}))
    swapped = CliRunner().invoke(main, ["build", "--config", str(path), "--encoder", "vit", "--json"])
    assert swapped.exit_code == 0, swapped.output
    assert "note: encoder family cnn -> vit" in swapped.output
    nulled = CliRunner().invoke(main, ["build", "--config", str(path), "--set", "encoder.block=null", "--json"])
    summary = json.loads(nulled.output[nulled.output.index("{"):])
    assert "block" not in summary["config"]["encoder"]["options"]


def test_build_with_a_data_section_resolves_size_dims_and_classes_as_train_does(tmp_path):
    cfg = config(SMALL, data={"preset": "synthetic-3d", "patch_size": [24, 16, 24],
                              "options": {"size": [24, 24, 24], "num_classes": 4, "num_train": 1, "num_held_out": 1}})
    path = write_config(tmp_path / "cfg.yaml", cfg)
    result = CliRunner().invoke(main, ["build", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["config"]["image_size"] == [24, 16, 24] and summary["config"]["dims"] == 3
    assert summary["config"]["out_channels"] == 4
    assert "from the config's data: section" in result.output


def test_default_run_names_include_architecture_and_encoder(tmp_path, monkeypatch):
    from flemme_core.cli_train import _run_config

    monkeypatch.chdir(tmp_path)
    flags = {"encoder": "cnn", "arch": "unet"}
    cnn = _run_config(None, "synthetic-2d", (), flags)
    swin = _run_config(None, "synthetic-2d", (), {**flags, "encoder": "swin"})
    assert cnn.output_dir.name == "synthetic-2d-unet-cnn" and swin.output_dir.name == "synthetic-2d-unet-swin"
    path = write_config(tmp_path / "mycfg.yaml", SMALL)
    assert _run_config(str(path), None, (), {}).output_dir.name == "mycfg"  # the config's own model
    assert _run_config(str(path), None, (), {"encoder": "vit"}).output_dir.name == "mycfg-unet-vit"


def test_a_folder_holding_a_different_model_never_suggests_resume(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", config(SMALL, train={"steps": 1}))
    out = str(tmp_path / "run")
    assert CliRunner().invoke(main, ["train", str(path), "-o", out, "-q"]).exit_code == 0
    other = CliRunner().invoke(main, ["train", str(path), "-o", out, "-q", "--set", "encoder.channels=[4,8]"])
    assert other.exit_code != 0 and "different run" in other.output and "--resume" not in other.output
    same = CliRunner().invoke(main, ["train", str(path), "-o", out, "-q"])
    assert same.exit_code != 0 and "--resume" in same.output


def _flemme_env(*args: str, **env: str):
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if not k.startswith("FLEMME_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "flemme_core", *args], capture_output=True, text=True, env=full,
                          timeout=120, check=False)


@requires_encoders("cnn")
def test_flemme_plugins_naming_nothing_is_reported_and_autoload_off_is_hinted():
    typo = _flemme_env("plugins", FLEMME_PLUGINS="cnnn")
    assert "unknown FLEMME_PLUGINS entry 'cnnn'; did you mean 'cnn'" in typo.stderr
    off = _flemme_env("build", "--encoder", "cnn", FLEMME_DISABLE_PLUGIN_AUTOLOAD="1")
    assert off.returncode != 0 and "autoload is off" in off.stderr and "FLEMME_PLUGINS" in off.stderr
    assert len(off.stderr.strip().splitlines()) == 1


@requires_encoders("swin")
def test_list_with_a_pattern_alone_matches_names_of_every_kind():
    result = CliRunner().invoke(main, ["list", "sw*", "--json"])
    assert result.exit_code == 0, result.output
    names = {(c["kind"], c["name"]) for c in json.loads(result.output)["components"]}
    assert ("encoder", "swin") in names and all(n.startswith("sw") for _, n in names)
    exact = CliRunner().invoke(main, ["list", "unet", "--json"])
    assert {c["name"] for c in json.loads(exact.output)["components"]} == {"unet"}
    typo = CliRunner().invoke(main, ["list", "encoderz"])
    assert typo.exit_code != 0 and "did you mean 'encoders'" in typo.output
