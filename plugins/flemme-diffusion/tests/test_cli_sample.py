"""`flemme sample`: outputs, reproducibility, and one clear line (nothing written) for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from diffusion_helpers import tiny

from flemme_core.build import build_model
from flemme_core.checkpoint import save_model
from flemme_core.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, cfg in {"ddpm": tiny("ddpm", size=16, timesteps=20), "unet": tiny("vae", size=16) | {"arch": "unet"},
                      "sdm": tiny("sdm", size=16, timesteps=20), "vae": tiny("vae", size=16)}.items():
        if name == "unet":
            cfg["arch_options"] = {}
        paths[name] = root / f"{name}.safetensors"
        save_model(build_model(cfg), paths[name])
    vae_path = root / "for_ldm.safetensors"
    save_model(build_model(tiny("vae", size=16)), vae_path)
    ldm = build_model(tiny("ldm", size=16, timesteps=20, autoencoder=str(vae_path)))
    paths["ldm"] = root / "ldm.safetensors"
    save_model(ldm, paths["ldm"])
    vae_path.unlink()  # the ldm now points at a missing autoencoder
    return paths


def run(*args):
    return CliRunner().invoke(main, ["sample", *map(str, args), "--no-progress"])


def test_sample_writes_grid_arrays_and_record_reproducibly(checkpoints, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(checkpoints["ddpm"], "-n", 3, "--sampler", "ddim", "--steps", 4, "--seed", 0, "-o", a).exit_code == 0
    assert run(checkpoints["ddpm"], "-n", 3, "--sampler", "ddim", "--steps", 4, "--seed", 0, "-o", b).exit_code == 0
    assert run(checkpoints["ddpm"], "-n", 3, "--sampler", "ddim", "--steps", 4, "--seed", 1, "-o", c).exit_code == 0
    arr = np.load(a / "samples.npy")
    assert arr.shape == (3, 1, 16, 16)
    assert np.array_equal(arr, np.load(b / "samples.npy"))
    assert np.array_equal(arr[1], np.load(c / "samples.npy")[0]), "sample i starts from seed + i"
    from PIL import Image

    assert Image.open(a / "grid.png").size[0] > 16
    record = json.loads((a / "samples.json").read_text())
    assert record["n"] == 3 and record["steps"] == 4
    assert not [p for p in a.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_sample_nifti_vae_and_sdm(checkpoints, tmp_path):
    import nibabel as nib

    result = run(checkpoints["vae"], "-n", 2, "--format", "nifti", "-o", tmp_path / "v")
    assert result.exit_code == 0, result.output
    assert nib.load(tmp_path / "v" / "sample_001.nii.gz").shape == (16, 16)
    cond = tmp_path / "cond.npy"
    np.save(cond, np.random.rand(1, 16, 16).astype("float32"))
    result = run(checkpoints["sdm"], "-n", 2, "--steps", 2, "--condition", cond, "-o", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "s" / "samples.npy").shape == (2, 1, 16, 16)
    samples = np.load(tmp_path / "s" / "samples.npy")
    assert np.allclose(np.load(tmp_path / "s" / "ensemble_means.npy")[0], samples.mean(0), atol=1e-6)
    assert np.allclose(np.load(tmp_path / "s" / "ensemble_stds.npy")[0], samples.std(0), atol=1e-6)


@pytest.mark.parametrize("key, extra, message", [
    ("unet", [], "not a generative checkpoint"),
    ("ddpm", ["-n", "0"], "at least 1"),
    ("ddpm", ["--steps", "21"], "exceed the 20 timesteps"),
    ("ddpm", ["--condition", "1"], "unconditional"),
    ("sdm", ["--condition", "WRONG"], "condition has shape"),
    ("ldm", [], "does not exist"),
    ("vae", ["--steps", "5"], "drop --sampler and --steps"),
])
def test_bad_input_is_one_line_and_writes_nothing(checkpoints, tmp_path, key, extra, message):
    out = tmp_path / "out"
    if "WRONG" in extra:
        bad = tmp_path / "bad.npy"
        np.save(bad, np.zeros((2, 8, 8), dtype="float32"))
        extra = [str(bad) if e == "WRONG" else e for e in extra]
    result = run(checkpoints[key], *extra, "-o", out)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.output
    assert not out.exists(), "nothing may be written on bad input"
