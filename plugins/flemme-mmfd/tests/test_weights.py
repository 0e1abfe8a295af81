"""Branch weights from local safetensors (key remapping, strict report) and checkpoint round trips."""

from __future__ import annotations

import warnings

import pytest
import torch
from mmfd_testutil import probe
from safetensors.torch import save_file

from flemme_core import build_model, load_model, save_model
from flemme_core.build import build_encoder
from flemme_core.config import encoder_config_from_dict
from flemme_core.errors import CheckpointError, ConfigError
from flemme_core.weights import remap_keys

CNN = {"name": "cnn", "channels": [8, 16], "norm": "group"}


def cnn_encoder():
    cfg = encoder_config_from_dict(CNN)
    cfg.image_size = [32, 32]
    return build_encoder(cfg)


def foreign_state(encoder) -> dict[str, torch.Tensor]:
    """The encoder's weights as a foreign model would name them."""
    return {f"backbone.{k.replace('stages.', 'blocks.')}": v.clone().contiguous()
            for k, v in encoder.state_dict().items()}


def fused_with(branch: dict, size: int = 32):
    cfg = encoder_config_from_dict({"name": "mmfd", "branches": [branch], "channels": [8, 8]})
    cfg.image_size = [size, size]
    return build_encoder(cfg)


def test_remap_keys_prefix_rules_and_drops():
    state = {"model.a.weight": torch.zeros(1), "model.b.weight": torch.ones(1), "head.w": torch.ones(2),
             "model.pos_embed": torch.ones(3)}
    out = remap_keys(state, [["^a\\.", "x."], ["pos_embed", None]], prefix="model.")
    assert set(out) == {"x.weight", "b.weight"}
    assert torch.equal(out["b.weight"], torch.ones(1))
    assert set(remap_keys(state, {"^model\\.": ""})) == {"a.weight", "b.weight", "head.w", "pos_embed"}
    with pytest.raises(ConfigError, match="two source keys"):
        remap_keys(state, [["^model\\.(a|b)", "same"]])
    with pytest.raises(ConfigError, match="key_map entries"):
        remap_keys(state, [["only-one"]])


def test_foreign_weights_load_through_key_map(tmp_path):
    source = cnn_encoder()
    path = tmp_path / "foreign.safetensors"
    save_file(foreign_state(source), str(path))
    enc = fused_with({**CNN, "weights": str(path), "prefix": "backbone.", "key_map": [["^blocks\\.", "stages."]]})
    branch = enc.branches[0]
    assert branch.report.ok and len(branch.report.loaded) == len(source.state_dict())
    for k, v in source.state_dict().items():
        assert torch.equal(branch.encoder.state_dict()[k], v)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(branch.encoder(x), source(x)))


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    state = foreign_state(cnn_encoder())
    dropped = min(state)
    del state[dropped]
    state["backbone.extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    branch = {**CNN, "weights": str(path), "prefix": "backbone.", "key_map": [["^blocks\\.", "stages."]]}
    with pytest.raises(CheckpointError, match=r"1 missing .*1 unexpected \(extra.weight\).*strict: false"):
        fused_with(branch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = fused_with({**branch, "strict": False})
    report = enc.branches[0].report
    assert report.missing == [dropped.removeprefix("backbone.").replace("blocks.", "stages.")]
    assert report.unexpected == ["extra.weight"] and not report.mismatched
    assert any("partial weight load" in str(w.message) for w in caught)


def test_shape_mismatch_is_reported(tmp_path):
    state = foreign_state(cnn_encoder())
    key = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="shape-mismatched"):
        fused_with({**CNN, "weights": str(tmp_path / "bad.safetensors"), "prefix": "backbone.",
                    "key_map": [["^blocks\\.", "stages."]]})


def test_unreadable_or_absent_weights_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        fused_with({**CNN, "weights": str(tmp_path / "nope.safetensors")})
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        fused_with({**CNN, "weights": str(tmp_path / "junk.safetensors")})


def test_branch_from_a_flemme_checkpoint(tmp_path):
    trained = build_model({"arch": "unet", "image_size": [32, 32], "encoder": CNN})
    path = save_model(trained, tmp_path / "cnn.safetensors")
    enc = fused_with({"checkpoint": str(path), "freeze": True})  # family config comes from the checkpoint
    branch = enc.branches[0]
    assert branch.family == "cnn" and branch.channels == [8, 16] and branch.report.ok
    for k, v in trained.encoder.state_dict().items():
        assert torch.equal(branch.encoder.state_dict()[k], v)


@pytest.mark.parametrize("arch", ["unet", "distill"])
def test_checkpoint_round_trip(tmp_path, arch):
    encoder = {"name": "mmfd", "branches": [{**CNN, "freeze": True, "lora": {"targets": ["conv"]}},
                                            probe(8, 12)],
               "fusion": "share_token", "fusion_options": {"num_tokens": 4, "depth": 1}}
    if arch == "unet":
        config = {"arch": "unet", "image_size": [32, 32], "encoder": encoder}
    else:
        config = {"arch": "distill", "image_size": [32, 32], "encoder": CNN, "arch_options": {"teacher": encoder}}
    model = build_model(config)
    for p in model.parameters():  # move every weight (LoRA B too) off its initial value
        torch.nn.init.normal_(p, std=0.1) if p.dim() else None
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    x = torch.randn(2, 1, 32, 32)
    model.eval(), loaded.eval()
    assert torch.allclose(model.predict(x), loaded.predict(x), atol=1e-6)
    if arch == "distill":
        assert torch.allclose(model.teacher.predict(x), loaded.teacher.predict(x), atol=1e-6)
        assert "encoder:mmfd" in loaded.checkpoint_metadata["components"]


README_RULES = r'''
prefix: "image_encoder."
key_map:
  - ["^patch_embed\\.proj\\.", "stem.proj."]
  - ["^pos_embed$", "stem.pos"]
  - ["^blocks\\.(\\d+)\\.attn\\.proj\\.", "stages.0.blocks.\\1.attn.out_proj."]
  - ["^blocks\\.(\\d+)\\.mlp\\.lin(\\d)\\.", "stages.0.blocks.\\1.mlp.linear\\2."]
  - ["^blocks\\.", "stages.0.blocks."]
  - ["^neck\\.", null]
  - ["^patch_embed\\.norm\\.", "stem.norm."]
'''


def sam_style_name(key: str) -> str:
    """The inverse of the README's rules: flemme-vit names -> SAM-style ViT names."""
    import re

    key = key.replace("stem.proj.", "patch_embed.proj.").replace("stem.norm.", "patch_embed.norm.")
    key = "pos_embed" if key == "stem.pos" else key
    key = re.sub(r"^stages\.0\.blocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj.", key)
    key = re.sub(r"^stages\.0\.blocks\.(\d+)\.mlp\.linear(\d)\.", r"blocks.\1.mlp.lin\2.", key)
    return "image_encoder." + re.sub(r"^stages\.0\.blocks\.", "blocks.", key)


def test_readme_key_map_loads_a_sam_style_vit(tmp_path):
    import yaml

    from flemme_core.registry import get_registry

    if "vit" not in get_registry().components("encoder"):
        pytest.skip("flemme-vit is not installed")
    branch = {"name": "vit", "channels": [32], "patch_size": 8, "num_blocks": 2, **yaml.safe_load(README_RULES)}
    source = fused_with({k: v for k, v in branch.items() if k not in ("prefix", "key_map")}).branches[0].encoder
    state = {sam_style_name(k): v.clone().contiguous() for k, v in source.state_dict().items()}
    state["image_encoder.neck.0.weight"] = torch.zeros(4)          # dropped by a null rule
    state["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(2)  # outside the prefix
    save_file(state, str(tmp_path / "sam_like.safetensors"))
    enc = fused_with({**branch, "weights": str(tmp_path / "sam_like.safetensors")})
    assert enc.branches[0].report.ok
    for k, v in source.state_dict().items():
        assert torch.equal(enc.branches[0].encoder.state_dict()[k], v)


def _paths_in(value) -> list[str]:
    """Every string in a JSON-like value that names a .safetensors file."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return [value] if isinstance(value, str) and value.endswith(".safetensors") else []


def test_checkpoints_load_without_the_files_their_branches_came_from(tmp_path):
    """A saved fusion model or distillation is self-contained: the branch checkpoint, the
    foreign weights and a teacher checkpoint only initialise; deleting them after saving
    must not stop the checkpoint from loading (e.g. on another machine)."""
    from flemme_core.checkpoint import read_metadata

    trained = build_model({"arch": "unet", "image_size": [32, 32], "encoder": CNN})
    branch_ckpt = save_model(trained, tmp_path / "branch.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file(foreign_state(cnn_encoder()), str(foreign))
    teacher = {"name": "mmfd", "residual": "main", "branches": [
        {"id": "main", "checkpoint": str(branch_ckpt), "freeze": True, "lora": {"targets": ["conv"], "rank": 2}},
        {**CNN, "id": "ext", "weights": str(foreign), "prefix": "backbone.", "key_map": [["^blocks\\.", "stages."]],
         "normalize": "zscore"}]}
    student = {"name": "cnn", "channels": [4, 8], "norm": "group"}
    distill = build_model({"arch": "distill", "image_size": [32, 32], "encoder": student,
                           "arch_options": {"teacher": teacher, "teacher_init": "main"}})
    fused = build_model({"arch": "unet", "image_size": [32, 32], "encoder": teacher})
    teacher_ckpt = save_model(distill.teacher, tmp_path / "teacher.safetensors")
    from_teacher = build_model({"arch": "distill", "image_size": [32, 32], "encoder": student,
                                "arch_options": {"teacher_checkpoint": str(teacher_ckpt)}})
    models = {"distill": distill, "fused": fused, "from_teacher": from_teacher}
    for m in models.values():
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    saved = {name: save_model(m, tmp_path / "out" / f"{name}.safetensors") for name, m in models.items()}
    for path in (branch_ckpt, foreign, teacher_ckpt):
        path.unlink()
    x = torch.randn(2, 1, 32, 32)
    for name, path in saved.items():
        config = read_metadata(path)["config"]
        assert _paths_in(config) == [], name
        loaded = load_model(path)
        loaded.eval(), models[name].eval()
        assert torch.allclose(loaded.predict(x), models[name].predict(x), atol=1e-6), name
        if name != "fused":
            assert torch.allclose(loaded.teacher.predict(x), models[name].teacher.predict(x), atol=1e-6), name
    stages = lambda name: read_metadata(saved[name])["config"]["arch_options"]["stages"]
    assert stages("distill") == ["teacher", "student"] and stages("from_teacher") == ["student"]
    branches = read_metadata(saved["fused"])["config"]["encoder"]["options"]["branches"]
    assert branches[0]["freeze"] is True and branches[0]["lora"]["rank"] == 2 and branches[1]["normalize"] == "zscore"
