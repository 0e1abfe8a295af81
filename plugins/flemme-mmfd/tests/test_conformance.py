"""flemme's conformance kit (flemme_core.testing) on this plugin's families: the contract, the
context rules, the common keys (norm, act, dropout, drop_path honoured or refused), save/load,
and the core architectures in 2D and 3D; every installed architecture in the slow run."""

import pytest

from flemme_core.testing import conformance_tests

test_conformance, test_conformance_every_architecture = conformance_tests("mmfd")



def test_common_keys_reach_the_branches():
    """`flemme build --encoder mmfd --channels 8,16` builds 8-16 branches (it once showed
    channels [8, 16] and built 32-64-128-256 branches, 2.98 M parameters)."""
    from flemme_core import build_model

    model = build_model({"arch": "unet", "image_size": 32, "encoder": {
        "name": "mmfd", "channels": [8, 16], "norm": "instance",
        "branches": [{"name": "cnn"}, {"name": "cnn", "channels": [12, 24], "norm": "batch"}]}})
    first, second = model.encoder.branches
    assert first.encoder.feature_channels == [8, 16] and model.encoder.feature_channels == [8, 16]
    assert first.encoder.config.norm == "instance"
    assert second.encoder.feature_channels == [12, 24] and second.encoder.config.norm == "batch"  # own keys win
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_misspelt_branch_option_gets_one_hint():
    """A misspelt family option is named; `channels`, a valid branch key, gets no fusion hint."""
    from flemme_core import build_model
    from flemme_core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        build_model({"arch": "unet", "image_size": 32, "encoder": {
            "name": "mmfd", "branches": [{"name": "cnn", "channels": [8, 16], "blok": "conv"}]}})
    assert "did you mean 'block'" in str(info.value) and "meant for the fusion" not in str(info.value)
    with pytest.raises(ConfigError, match="did you mean 'freeze'"):
        build_model({"arch": "unet", "image_size": 32, "encoder": {
            "name": "mmfd", "branches": [{"name": "cnn", "channels": [8, 16], "frezee": True}]}})


def test_distill_takes_its_inner_architectures_task(tmp_path):
    """`inner: ae` distils a reconstruction model: image outputs, PSNR monitored (it once failed:
    distill's registration says segmentation)."""
    from flemme_core.tasks import RECONSTRUCTION, task_of
    from flemme_core.training import train
    from flemme_core.training.config import run_config_from_dict
    from flemme_core.training.setup import architecture_task

    options = {"inner": "ae", "teacher": {"name": "cnn", "channels": [8, 16]}}
    assert architecture_task("distill", options) is RECONSTRUCTION
    run = {"model": {"arch": "distill", "encoder": {"name": "cnn", "channels": [4, 8]}, "arch_options": options},
           "data": {"preset": "synthetic-2d", "options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]},
                    "patch_size": [32, 32], "batch_size": 2},
           "train": {"steps": 2, "val_every": 0, "threads": 1, "output": str(tmp_path / "run")}}
    summary = train(run_config_from_dict(run), quiet=True)
    assert summary["task"] == "reconstruction" and summary["monitor"] == "psnr" and "psnr" in summary["final"]
    from flemme_core import load_model

    model = load_model(tmp_path / "run" / "last.safetensors")
    assert task_of(model) is RECONSTRUCTION and model.config.out_channels == 1
