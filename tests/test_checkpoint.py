"""Checkpoints: bit-exact round trip from the file alone, atomic writes, clear failures."""

from __future__ import annotations

import json
import os

import pytest
import torch
from model_configs import tiny_model_config
from safetensors.torch import save_file

from flemme_core import build_model, load_model, save_model
from flemme_core.checkpoint import atomic_write, read_metadata
from flemme_core.errors import CheckpointError


@pytest.fixture
def saved(tmp_path):
    model = build_model(tiny_model_config("tiny", "unet", 2, 32, loss=["dice", {"name": "ce", "weight": 0.5}]))
    # make BatchNorm running statistics non-trivial so they are part of the round trip
    model.train()
    model(torch.randn(4, 1, 32, 32))
    path = save_model(model, tmp_path / "model.safetensors", extra={"step": 7})
    return model, path


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    again = load_model(path)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model.eval()(x), again.eval()(x))


def test_checkpoint_survives_a_change_of_the_family_defaults(saved, monkeypatch):
    """The stored config has every default resolved: a release that changes a family's default
    widths or options still rebuilds the saved network."""
    import tiny_family

    model, path = saved
    monkeypatch.setattr(tiny_family.TinyFamily, "defaults", {**tiny_family.TinyFamily.defaults, "norm": "group", "patch_size": 2})
    monkeypatch.setattr(tiny_family.TinyOptions, "__init__", _with_default(tiny_family.TinyOptions, kernel_size=5))
    assert build_model(model.config).encoder.feature_strides[0] == 2  # the new defaults do take effect
    again = load_model(path)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model.eval()(x), again.eval()(x))


def _with_default(cls, **defaults):
    init = cls.__init__

    def patched(self, **kwargs):
        init(self, **{**defaults, **kwargs})
    return patched


def test_metadata_holds_config_versions_and_parameters(saved):
    model, path = saved
    meta = read_metadata(path)
    assert meta["config"] == model.standalone_config().to_dict()
    assert meta["config"]["encoder"]["norm"] == "batch"  # the family's default, resolved
    assert meta["versions"]["flemme-core"] == "0.1.0"
    assert meta["components"]["encoder:tiny"] == "tiny-family"  # registered by the test suite
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())
    assert meta["extra"] == {"step": 7}


def test_missing_plugin_is_named(saved, tmp_path):
    _, path = saved
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as fh:
        metadata = dict(fh.metadata())
    config = json.loads(metadata["flemme.config"])
    config["encoder"]["name"] = "hyena"
    metadata["flemme.config"] = json.dumps(config)
    metadata["flemme.components"] = json.dumps({"encoder:hyena": "flemme-hyena 0.4.0"})
    other = tmp_path / "needs_plugin.safetensors"
    save_file(load_file(str(path)), str(other), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"needs encoder 'hyena'.*'flemme-hyena' 0.4.0.*install the distribution flemme-hyena that provided it"):
        load_model(other)


def test_truncated_file_is_a_clear_error(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(broken)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(garbage)


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a flemme model checkpoint"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_no_pickle_in_checkpoint(saved):
    _, path = saved
    head = path.read_bytes()[:8]
    header_len = int.from_bytes(head, "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert "__metadata__" in header  # a plain safetensors header, no pickle opcodes
    assert not path.read_bytes().startswith(b"\x80")
