"""`flemme predict` replays the preprocessing recorded in the checkpoint: a preset's whole-image
constants (also for a dataset registered by a plugin), and data.transforms' geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from train_helpers import config

from flemme_core.cli import main
from flemme_core.data.preprocessing import linear
from flemme_core.data.splits import DatasetSplits
from flemme_core.hookspecs import hookimpl
from flemme_core.registry import get_registry
from flemme_core.training.config import run_config_from_dict

OFFSET, SCALE = 1000.0, 400.0


def _raw_volume() -> tuple[np.ndarray, np.ndarray]:
    """A raw 'scanner' volume (intensities around 1000) with two classes; y < 24 trains, y >= 24 is held out."""
    rng = np.random.default_rng(3)
    label = np.zeros((24, 40, 24), dtype=np.int64)
    for _ in range(6):
        c = rng.integers(4, 20, size=3) * np.array([1, 2, 1])
        label[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
    raw = OFFSET + SCALE * (label + rng.normal(0, 0.3, label.shape))
    return raw.astype(np.float32), label


def plugin_preset() -> DatasetSplits:
    raw, label = _raw_volume()
    mean, std = float(raw.mean()), float(raw.std())  # statistics of the WHOLE source volume
    image = (raw - mean) / std
    return DatasetSplits(
        "raw-plugin-3d", train=[{"image": image[None, :, :24].copy(), "label": label[None, :, :24].copy()}],
        held_out=[{"image": image[None, :, 24:].copy(), "label": label[None, :, 24:].copy()}], num_classes=2,
        dims=3, held_out_description="y >= 24", patch_size=(16, 16, 16), spacing=(1.0, 1.0, 1.0),
        preprocessing=[linear(mean, std, why="z-score with the whole volume's statistics")])


class Plugin:
    @hookimpl
    def register_datasets(self, register):
        register("raw-plugin-3d", plugin_preset, description="raw volume, whole-volume z-score", dims=3,
                 task="segmentation", num_classes=2)


@pytest.fixture(scope="module")
def plugin_checkpoint(tmp_path_factory):
    from flemme_core.training import train

    plugin = Plugin()
    get_registry().register_plugin(plugin, name="raw-plugin")
    out = tmp_path_factory.mktemp("pp") / "run"
    # batch norm: instance norm would make the model blind to an affine intensity change (what is tested)
    run = {"model": {"arch": "unet", "encoder": {"name": "tiny", "channels": [4, 8], "norm": "batch"}},
           "data": {"preset": "raw-plugin-3d", "batch_size": 2},
           "train": {"steps": 6, "lr": 0.01, "warmup": 0, "val_every": 0, "threads": 1, "progress": False,
                     "output": str(out)}}
    try:
        train(run_config_from_dict(run), quiet=True)
        yield str(out / "last.safetensors")
    finally:
        get_registry().unregister_plugin(plugin)


def test_predict_on_a_raw_crop_of_a_plugin_preset_sees_what_evaluation_saw(tmp_path, plugin_checkpoint):
    from flemme_core.checkpoint import load_model
    from flemme_core.training.evaluation import EvalSettings, infer
    from flemme_core.training.metrics import labels_from_logits

    raw, _ = _raw_volume()
    crop = raw[:, 24:]  # the held-out region, as a user would cut it from the raw scan
    src = tmp_path / "crop.nii.gz"
    nib.save(nib.Nifti1Image(crop, np.eye(4)), str(src))
    dst = tmp_path / "seg.nii.gz"
    result = CliRunner().invoke(main, ["predict", plugin_checkpoint, str(src), "-o", str(dst)])
    assert result.exit_code == 0, result.output
    predicted = np.asarray(nib.load(str(dst)).dataobj)

    model = load_model(plugin_checkpoint).eval()
    held_out = plugin_preset().held_out[0]["image"]  # exactly what evaluation fed the model
    settings = EvalSettings(task="segmentation", metrics=[], roi_size=[16, 16, 16], sw_batch_size=4)
    logits = infer(model, torch.from_numpy(held_out)[None], settings)[0]
    np.testing.assert_array_equal(predicted, labels_from_logits(logits[None])[0, 0].numpy())
    # the model's output itself: predict's input is evaluation's input
    from flemme_core.data.io import read_image
    from flemme_core.training.inference import _preprocessing, predict_image

    extra = model.checkpoint_metadata["extra"]
    img = read_image(src)
    seen = predict_image(model, img, _preprocessing("auto", extra, img.array), settings)
    np.testing.assert_allclose(seen.numpy(), logits.numpy(), atol=1e-5)
    # what predict did before the steps were recorded (no step for an unknown preset): not the same input
    unscaled = predict_image(model, img, _preprocessing("none", extra, img.array), settings)
    assert not np.allclose(unscaled.numpy(), logits.numpy(), atol=1e-2)
    meta = model.checkpoint_metadata["extra"]["preprocessing"]
    assert meta[0]["name"] == "linear" and meta[0]["subtract"] == pytest.approx(float(_raw_volume()[0].mean()))


def test_file_source_steps_are_recorded_and_the_geometry_is_inverted():
    """orientation + spacing + z-score from data.transforms; predict resamples back onto the input grid."""
    from flemme_core.data.io import ImageFile
    from flemme_core.data.preprocessing import from_transforms
    from flemme_core.data.transforms import parse_transforms
    from flemme_core.training.evaluation import EvalSettings
    from flemme_core.training.inference import predict_image

    steps = from_transforms(parse_transforms({"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "normalize": "zscore"}))
    assert [s["name"] for s in steps] == ["orientation", "spacing", "zscore"]

    class Identity(torch.nn.Module):
        def predict(self, x):
            return x

    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (30, 22, 26)], indexing="ij")
    smooth = (np.sin(3 * z) + np.cos(2 * y) * x)[None].astype(np.float32) * 50 + 300
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS: the orientation step must flip it and flip it back
    img = ImageFile(path=None, array=smooth, affine=affine, spacing=(1.0, 1.0, 1.0), format="nifti")
    out = predict_image(Identity(), img, steps, EvalSettings(task="reconstruction", metrics=[], roi_size=[8, 8, 8]))
    assert tuple(out.shape) == smooth.shape
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    seen = np.asarray(Spacing(pixdim=[2.0, 2.0, 2.0])(MetaTensor(torch.from_numpy(smooth), affine=torch.eye(4))))
    reference = (smooth - seen.mean()) / seen.std()  # z-scored with the statistics of the resampled image
    inner = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))  # resampling blurs the border
    np.testing.assert_allclose(out.numpy()[inner], reference[inner], atol=0.08)


@pytest.fixture(scope="module")
def ckpt_2d(tmp_path_factory):
    from train_helpers import TINY_2D

    from flemme_core.training import train

    out = tmp_path_factory.mktemp("p2") / "run"
    cfg = config(TINY_2D, train={"steps": 2, "val_every": 0, "output": str(out)},
                 data={"options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32]})
    train(run_config_from_dict(cfg), quiet=True)
    return str(out / "last.safetensors")


def test_png_label_maps_are_palette_images_and_jpeg_is_refused(tmp_path, ckpt_2d, capfd):
    from PIL import Image

    src = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(40, 56)).astype(np.uint8)).save(src)
    capfd.readouterr()
    result = CliRunner().invoke(main, ["predict", ckpt_2d, str(src), "-o", str(tmp_path / "seg.png")])
    assert result.exit_code == 0, result.output
    assert "palette images: pixel values are the class indices" in result.output
    assert "nvImageCodec" not in result.output + "".join(capfd.readouterr())
    png = Image.open(tmp_path / "seg.png")
    assert png.mode == "P" and png.size == (56, 40)
    indices = np.array(png)
    assert set(np.unique(indices)) <= {0, 1, 2}
    palette = png.getpalette()
    assert palette[:3] == [0, 0, 0] and palette[3:6] != [0, 0, 0] and palette[3:6] != palette[6:9]
    jpg = CliRunner().invoke(main, ["predict", ckpt_2d, str(src), "-o", str(tmp_path / "seg.jpg")])
    assert jpg.exit_code != 0 and "JPEG is lossy" in jpg.output and not (tmp_path / "seg.jpg").exists()


def test_nifti_output_keeps_the_inputs_sform_and_qform_codes(tmp_path, plugin_checkpoint):
    raw, _ = _raw_volume()
    img = nib.Nifti1Image(raw[:, 24:], np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_sform(img.affine, code=2)
    img.set_qform(img.affine, code=1)
    src = tmp_path / "aligned.nii.gz"
    nib.save(img, str(src))
    dst = tmp_path / "seg.nii.gz"
    result = CliRunner().invoke(main, ["predict", plugin_checkpoint, str(src), "-o", str(dst)])
    assert result.exit_code == 0, result.output
    header = nib.load(str(dst)).header
    assert int(header["sform_code"]) == 2 and int(header["qform_code"]) == 1


@pytest.mark.slow
def test_stardist_predict_on_the_raw_held_out_quadrant_matches_eval(tmp_path):
    """Issue 19: predict normalised each image by its own percentiles (Dice 0.906 against eval's 0.944
    on the same quadrant). With the preset's whole-image constants replayed, the Dice agree."""
    stardist = pytest.importorskip("stardist.data")
    from flemme_core.training import train
    from flemme_core.training.inference import evaluate_checkpoint

    run = {"model": {"arch": "unet", "encoder": {"name": "tiny", "channels": [8, 16, 32], "norm": "instance"}},
           "data": {"preset": "stardist-nuclei-2d", "patch_size": [64, 64], "batch_size": 4},
           "train": {"steps": 60, "lr": 0.01, "warmup": 0, "val_every": 0, "threads": 2, "progress": False,
                     "output": str(tmp_path / "run")}}
    train(run_config_from_dict(run), quiet=True)
    ckpt = str(tmp_path / "run" / "last.safetensors")
    evaluated = evaluate_checkpoint(ckpt)["metrics"]["dice"]
    image, mask = stardist.test_image_nuclei_2d(return_mask=True)
    crop, truth = np.asarray(image)[256:, 256:].astype(np.float32), np.asarray(mask)[256:, 256:] > 0
    nib.save(nib.Nifti1Image(crop, np.eye(4)), str(tmp_path / "crop.nii.gz"))
    result = CliRunner().invoke(main, ["predict", ckpt, str(tmp_path / "crop.nii.gz"), "-o", str(tmp_path / "p.nii.gz")])
    assert result.exit_code == 0, result.output
    pred = np.asarray(nib.load(str(tmp_path / "p.nii.gz")).dataobj) > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    CliRunner().invoke(main, ["predict", ckpt, str(tmp_path / "crop.nii.gz"), "-o", str(tmp_path / "q.nii.gz"),
                              "--normalize", "percentile"])  # the old behaviour: this crop's own percentiles
    old = np.asarray(nib.load(str(tmp_path / "q.nii.gz")).dataobj) > 0
    print(f"eval Dice {evaluated:.4f}, predict Dice on the raw crop {dice:.4f}, with per-crop percentiles "
          f"{2 * (old & truth).sum() / (old.sum() + truth.sum()):.4f}")
    assert abs(dice - evaluated) < 1e-4


def test_info_shows_the_recorded_preprocessing(plugin_checkpoint):
    result = CliRunner().invoke(main, ["info", plugin_checkpoint])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("preprocess"))
    assert "(x - 1" in line and "whole volume's statistics" in line
