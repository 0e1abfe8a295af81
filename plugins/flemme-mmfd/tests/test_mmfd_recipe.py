"""MMFD's own recipe as shipped configs: MedSAM + PiDiNet + PLIP fused by shared tokens, and its
distillation into TinyViT. Needs flemme-timm (timm, transformers) and flemme-pidinet; skipped without them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("flemme_timm")
pytest.importorskip("flemme_pidinet")
pytest.importorskip("transformers")
if __import__("importlib.util").util.find_spec("timm") is None:  # `import timm` itself needs torchvision;
    pytest.skip("timm is not installed", allow_module_level=True)  # flemme-timm imports it without

from flemme_core import build_model
from flemme_core.testing import check_reloads_without

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE, DISTILL = CONFIGS / "mmfd-medsam-plip-pidinet.yaml", CONFIGS / "mmfd-distill-tinyvit.yaml"
# The same structure with small networks (SAM and CLIP ViT-B are 90 M parameters each).
TINY_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "window_size": 2}
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 32}


def teacher_of(model_cfg: dict) -> dict:
    return model_cfg["arch_options"]["teacher"] if model_cfg["arch"] == "distill" else model_cfg["encoder"]


def small(path: Path, image: int = 32, branch_input: int = 64) -> dict:
    """The shipped config with small networks, a small image, and the branches' input at twice it."""
    cfg = yaml.safe_load(path.read_text())
    model = cfg["model"]
    model["image_size"] = [image, image]
    teacher = teacher_of(model)
    teacher["fusion_options"]["num_tokens"] = 16
    for b in teacher["branches"]:
        b["input_size"] = [branch_input, branch_input]
        if b["name"] == "sam":
            b.update(TINY_SAM)
        elif b["name"] == "clip":
            b["config"] = TINY_CLIP
        elif b["name"] == "pidinet":
            b["variant"] = "tiny"
    return cfg


def test_recipe_is_mmfds_structure():
    """Branch families, frozen networks, LoRA on SAM's q and v only, MedSAM's grid as the anchor,
    one fused 256-channel level, shared tokens d2t512 (read from the shipped file)."""
    teacher = yaml.safe_load(RECIPE.read_text())["model"]["encoder"]
    assert [(b["id"], b["name"]) for b in teacher["branches"]] == [("medsam", "sam"), ("pidinet", "pidinet"),
                                                                    ("plip", "clip")]
    assert teacher["fusion"] == "share_token" and teacher["fusion_options"] == {"depth": 2, "num_tokens": 512}
    assert teacher["anchor"] == "medsam" and teacher["channels"] == [256]
    assert all(b["freeze"] and b["input_size"] == [512, 512] for b in teacher["branches"])
    distilled = yaml.safe_load(DISTILL.read_text())["model"]
    assert teacher_of(distilled) == teacher  # the distillation's teacher is the recipe
    assert (distilled["encoder"]["name"], distilled["encoder"]["variant"]) == ("sam", "vit_t")  # MobileSAM's encoder
    assert distilled["arch_options"]["feature_weight"] == 10.0 and distilled["arch_options"]["logit_weight"] == 0.0


def test_recipe_builds_and_trains_only_lora_fusion_and_decoder():
    model = build_model(small(RECIPE)["model"])
    enc = model.encoder
    assert enc.feature_channels == [256] and enc.feature_strides == [8]  # MedSAM's grid: 16 on the 2x view
    grids = {b.id: (b.channels, b.strides) for b in enc.branches}
    assert grids == {"medsam": ([256], [8.0]), "pidinet": ([32], [4.0]), "plip": ([32], [16.0])}
    medsam = enc.branches[0]
    assert medsam.lora_layers and all(name.endswith("attn.qkv") for name in medsam.lora_layers)
    out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    out.square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    in_branches = {n for n in trainable if n.startswith("encoder.branches.")}
    assert in_branches and all(".lora_" in n for n in in_branches)  # frozen networks, trainable adapters


def test_distillation_into_tinyvit_builds_and_runs_both_stages():
    model = build_model(small(DISTILL)["model"])
    student = model.student.encoder
    assert "MobileSAM" in student.backend and (student.feature_channels, student.feature_strides) == ([256], [16])
    assert isinstance(model.projectors[0], torch.nn.Identity)  # 256 = the fused width: MSE on the embedding itself
    x, y = torch.rand(2, 1, 32, 32), torch.randint(0, 2, (2, 1, 32, 32))
    from flemme_core.losses import build_loss

    criterion = build_loss(model.config.loss, model.config.out_channels, model.config.dims)
    assert model.training_stages() == ["teacher", "student"]
    for stage in model.training_stages():
        model.begin_stage(stage)
        loss, logs = model.training_loss({"image": x, "label": y}, criterion)
        assert torch.isfinite(loss)
        loss.backward()
    assert logs["feature"] > 0  # MMFD's feature MSE (weight 10) between student and fused teacher maps
    assert all(p.grad is not None for p in model.student.encoder.parameters() if p.requires_grad)
    assert model(x).shape == (2, 2, 32, 32)


def mobile_sam_layout(key: str) -> str:
    """flemme's vit_t key -> MobileSAM's (the inverse of flemme_timm.mobile_sam's map, re-stated)."""
    parts = ["c" if p == "conv" else p for p in key.split(".")]
    if parts[0] == "stages":
        stage = int(parts[1]) - (parts[2] == "downsample")
        parts[:2] = ["layers", str(stage)]
    elif parts[0] == "patch_embed":
        parts[1:2] = ["seq", {"conv1": "0", "conv2": "2"}[parts[1]]]
    return "image_encoder." + ".".join(parts)


def test_mobile_sam_checkpoint_starts_the_student(tmp_path):
    """--set encoder.weights=mobile_sam.pt: the file as MobileSAM publishes it (whole Sam, its unused
    classifier included) fills the student's encoder; grey input sums the RGB stem filters."""
    torch.manual_seed(0)
    published = build_model({"arch": "unet", "image_size": 32, "in_channels": 3,
                             "encoder": {"name": "sam", "variant": "vit_t"}}).encoder.backbone.state_dict()
    state = {mobile_sam_layout(k): v for k, v in published.items()}
    assert "image_encoder.layers.2.downsample.conv2.c.weight" in state and "image_encoder.patch_embed.seq.0.c.weight" in state
    state |= {"image_encoder.norm_head.weight": torch.ones(320), "image_encoder.head.weight": torch.zeros(1000, 320),
              "mask_decoder.iou_token.weight": torch.zeros(1, 256)}
    torch.save(state, tmp_path / "mobile_sam.pt")
    cfg = small(DISTILL)
    cfg["model"]["encoder"]["weights"] = str(tmp_path / "mobile_sam.pt")
    student = build_model(cfg["model"]).student.encoder.backbone
    assert torch.equal(student.stages[3].downsample.conv2.conv.weight, published["stages.3.downsample.conv2.conv.weight"])
    assert torch.equal(student.neck[2].weight, published["neck.2.weight"])
    assert torch.equal(student.patch_embed.conv1.conv.weight, published["patch_embed.conv1.conv.weight"].sum(1, keepdim=True))


def test_published_weights_plug_in_under_options_and_are_not_needed_to_reload(tmp_path):
    """A branch family reading its own published format gets the file under options: {weights};
    the saved model holds every weight and reloads after the file is gone."""
    torch.manual_seed(0)
    published = build_model({"arch": "unet", "image_size": 32, "in_channels": 3,
                             "encoder": {"name": "pidinet", "variant": "tiny"}}).encoder.state_dict()
    path = tmp_path / "table5_pidinet-tiny.pth"  # as the release saves it: DataParallel keys under state_dict
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in published.items()}}, path)
    cfg = small(RECIPE)
    cfg["model"]["encoder"]["branches"][1]["options"] = {"weights": str(path)}
    model = build_model(cfg["model"]).eval()
    pidinet = model.encoder.branches[1].encoder
    assert torch.equal(pidinet.block4_4.conv2.weight, published["block4_4.conv2.weight"])
    assert torch.equal(pidinet.init_block.weight, published["init_block.weight"].sum(1, keepdim=True))  # grey
    check_reloads_without(model, [path], torch.rand(1, 1, 32, 32), tmp_path)


def test_a_pth_given_as_the_fusions_safetensors_weights_says_where_it_goes(tmp_path):
    from flemme_core.errors import CheckpointError

    path = tmp_path / "medsam_vit_b.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, path)
    cfg = small(RECIPE)
    cfg["model"]["encoder"]["branches"][0]["weights"] = str(path)
    with pytest.raises(CheckpointError, match=r"branches\[0\].options: \{weights: "):
        build_model(cfg["model"])


@pytest.mark.slow
def test_full_scale_recipe_gives_mmfds_maps_at_512():
    """The real networks (SAM ViT-B, PiDiNet, CLIP ViT-B/32, random weights): [256, 32²], [96, 64²],
    [768, 16²] from the 512 view of a 256 tile, fused [256, 32²]."""
    cfg = copy.deepcopy(yaml.safe_load(RECIPE.read_text())["model"])
    model = build_model(cfg).eval()
    x = torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        maps = {b.id: tuple(b(x)[-1].shape[1:]) for b in model.encoder.branches}
        fused = model.encoder(x)
    assert maps == {"medsam": (256, 32, 32), "pidinet": (96, 64, 64), "plip": (768, 16, 16)}
    assert [tuple(f.shape[1:]) for f in fused] == [(256, 32, 32)]


@pytest.mark.slow
@pytest.mark.parametrize("path", [RECIPE, DISTILL], ids=["recipe", "distill"])
def test_flemme_train_two_steps_on_synthetic_data(tmp_path, path):
    """`flemme train <config> --steps 2` (small networks, synthetic images), every stage runs."""
    import json

    from click.testing import CliRunner

    from flemme_core.cli import main

    cfg = small(path)
    cfg["model"]["out_channels"] = 3
    cfg["data"] = {"preset": "synthetic-2d", "options": {"num_train": 4, "num_held_out": 2, "size": [32, 32],
                                                           "seed": 0}, "patch_size": [32, 32], "batch_size": 2}
    cfg["train"].update(output=str(tmp_path / "run"), val_every=2)
    config = tmp_path / path.name
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["train", str(config), "--steps", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.safetensors").is_file()
    stages = {json.loads(line).get("stage") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()}
    assert stages >= ({"teacher", "student"} if path == DISTILL else set())
