"""Foreign weights in the core: ``flemme convert``, torch files read only with weights_only, nested
state dicts (the LoRA q/v adapter is tested in test_lora.py)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from flemme_core.errors import CheckpointError
from flemme_core.weights import read_weights, unwrap_state_dict


def flemme(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flemme_core", *args], check=False, capture_output=True, text=True)


def test_convert_writes_the_nested_state_dict_as_safetensors(tmp_path):
    sd = {"image_encoder.w": torch.randn(3, 4), "mask_decoder.b": torch.arange(5)}
    view = torch.randn(6, 4)
    sd["shared"] = view[:3]  # a view into a larger storage: safetensors needs it on its own
    torch.save({"epoch": 7, "model": sd}, tmp_path / "ckpt.pth")
    run = flemme("convert", str(tmp_path / "ckpt.pth"), "-o", str(tmp_path / "out.safetensors"))
    assert run.returncode == 0, run.stderr
    got = load_file(str(tmp_path / "out.safetensors"))
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    only = flemme("convert", str(tmp_path / "ckpt.pth"), "-o", str(tmp_path / "enc.safetensors"),
                  "--prefix", "image_encoder.")
    assert only.returncode == 0 and set(load_file(str(tmp_path / "enc.safetensors"))) == {"image_encoder.w"}


def test_convert_refuses_pickles_in_one_line_and_writes_nothing(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1)}, tmp_path / "p.pth")
    run = flemme("convert", str(tmp_path / "p.pth"), "-o", str(tmp_path / "p.safetensors"))
    assert run.returncode != 0
    line = run.stderr.strip()
    assert "\n" not in line and "needs full unpickling" in line and "argparse.Namespace" in line
    assert list(tmp_path.iterdir()) == [tmp_path / "p.pth"]  # no output, no temporary file left


def test_convert_output_rules(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "a.pth")
    (tmp_path / "b.safetensors").write_text("keep me")
    assert "must end in .safetensors" in flemme("convert", str(tmp_path / "a.pth"), "-o", str(tmp_path / "b.pt")).stderr
    exists = flemme("convert", str(tmp_path / "a.pth"), "-o", str(tmp_path / "b.safetensors"))
    assert exists.returncode != 0 and "--force" in exists.stderr
    assert (tmp_path / "b.safetensors").read_text() == "keep me"


def test_read_weights_by_content_and_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "model.bin"))  # safetensors content under a .bin name
    assert torch.equal(read_weights(tmp_path / "model.bin")["w"], torch.ones(2))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch weights file"):
        read_weights(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist; .*nothing is downloaded"):
        read_weights(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"\['state_dict'\] holds no tensors"):
        unwrap_state_dict({"state_dict": {"epoch": 3}}, "'x.pth'")
