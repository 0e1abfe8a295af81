"""Entry point of flemme-timm: names, descriptions and lazy factories only (no torch, timm or
transformers import: they load when a model is built)."""

from flemme_core.hookspecs import hookimpl

_COMMON = ("weights (local file, never downloaded), normalize (model's mean/std on [0,1] images), freeze, "
           "lora ({rank, alpha, targets: [qv]}), pyramid (extra strides, e.g. [8,16,32]), decoder (family, "
           "default {name: cnn, up: interp}); 2D only; no context injection")
_TINY_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "window_size": 2,
             "neck_channels": 16, "native_size": 64}
_TINY_CLIP = {"config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "image_size": 32, "patch_size": 8}}


@hookimpl
def register_encoders(register) -> None:
    register("timm", "flemme_timm.timm_family:encoder",
             "any timm model's features_only pyramid (model: resnet34, convnext_tiny, tiny_vit_5m_224 = "
             f"ImageNet TinyViT (MobileSAM's: sam vit_t), ...; out_indices; model_args) in timm's weight format; {_COMMON}",
             # zero_init_last: false, so that drop_path acts on a random ResNet (timm zeroes its residual branches)
             example={"model": "resnet10t", "out_indices": [0, 1, 2, 3], "model_args": {"zero_init_last": False},
                      "channels": None}, dims=[2])
    register("sam", "flemme_timm.sam:encoder",
             "SAM/MedSAM ViT image encoder (timm samvit) from the ORIGINAL checkpoint (image_encoder.* keys), "
             "[256, H/16] after SAM's neck; variant: vit_b|vit_l|vit_h, or vit_t = MobileSAM's TinyViT (weights: "
             "mobile_sam.pt); position tables resized to the input; "
             f"{_COMMON}", example={**_TINY_SAM, "channels": None}, dims=[2])
    register("clip", "flemme_timm.clip:encoder",
             "CLIP vision tower (PLIP, OpenAI CLIP) from a Hugging Face folder via transformers: patch tokens "
             f"[hidden, H/patch] (ViT-B/32: [768, H/32]), position table interpolated; config: inline fields; {_COMMON}",
             example={**_TINY_CLIP, "channels": None}, dims=[2])
