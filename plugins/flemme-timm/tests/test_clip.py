"""The ``clip`` family against transformers' CLIPVisionModel, from folders made with save_pretrained."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from timm_testutil import build_encoder, max_diff

from flemme_core.errors import CheckpointError, ConfigError

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 64, "patch_size": 16}


clip_encoder = functools.partial(build_encoder, "clip")


def patch_tokens(model, x, interpolate=False):
    out = model(pixel_values=x, interpolate_pos_encoding=interpolate).last_hidden_state[:, 1:]
    side = int(out.shape[1] ** 0.5)
    return out.transpose(1, 2).reshape(x.shape[0], -1, side, side)


@pytest.fixture(scope="module")
def vision_folder(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(3)
    ref = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    folder = tmp_path_factory.mktemp("clip_vision")
    ref.save_pretrained(folder)
    return ref, folder


def test_patch_tokens_equal_transformers(vision_folder):
    ref, folder = vision_folder
    enc = clip_encoder({"weights": str(folder), "normalize": False})
    assert enc.feature_channels == [32] and enc.feature_strides == [16]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(enc(x)[0], patch_tokens(ref, x)) <= 1e-5


def test_other_size_interpolates_the_position_table(vision_folder):
    ref, folder = vision_folder
    enc = clip_encoder({"weights": str(folder), "normalize": False}, size=128)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out = enc(x)[0]
        assert out.shape == (1, 32, 8, 8)
        assert max_diff(out, patch_tokens(ref, x, interpolate=True)) <= 1e-5


def test_full_clip_folder_like_plip_loads_the_vision_tower(tmp_path):
    """PLIP is a whole CLIPModel folder (text tower, projections, preprocessor_config.json)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(4)
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 50, "max_position_embeddings": 16}
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=8)).eval()
    full.save_pretrained(tmp_path)
    if (tmp_path / "model.safetensors").is_file():  # PLIP ships pytorch_model.bin (transformers 5 writes safetensors)
        from safetensors.torch import load_file

        torch.save(load_file(str(tmp_path / "model.safetensors")), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    assert (tmp_path / "pytorch_model.bin").is_file()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    enc = clip_encoder({"weights": str(tmp_path)}, in_channels=1)
    g = torch.rand(1, 1, 64, 64)
    m, s = sum(mean) / 3, sum(std) / 3
    with torch.no_grad():  # 1 channel: RGB filters summed = the grey image repeated, normalised by the means
        assert max_diff(enc(g)[0], patch_tokens(full.vision_model, ((g - m) / s).repeat(1, 3, 1, 1))) <= 1e-5
    standalone = enc.standalone_config()["options"]
    assert "weights" not in standalone and standalone["config"]["hidden_size"] == 32 and standalone["mean"] == mean


def test_weights_of_another_config_are_one_line(vision_folder, tmp_path):
    _, folder = vision_folder
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"16 missing \((vision_model\.)?encoder\.layers\.2\.") as err:
        clip_encoder({"weights": str(tmp_path)})
    assert "\n" not in str(err.value)


def test_unknown_config_key_and_patch_rule():
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        clip_encoder({"config": {**VISION, "hiden_size": 32}})
    with pytest.raises(ConfigError, match="multiple of CLIP's patch size 16"):
        clip_encoder({"config": VISION}, size=72)


def test_lora_qv_wraps_q_and_v_projections():
    enc = clip_encoder({"config": VISION, "freeze": True, "lora": {"rank": 2}})
    assert sorted({n.rsplit(".", 1)[-1] for n in enc.lora_layers}) == ["q_proj", "v_proj"]
    assert len(enc.lora_layers) == 2 * VISION["num_hidden_layers"]
