"""Entry point of flemme-mmfd: names and lazy ``"module:attr"`` factories only (no torch import)."""

from flemme_core.hookspecs import hookimpl

_FUSIONS = "flemme_mmfd.fusions"


@hookimpl
def register_encoders(register) -> None:
    register("mmfd", "flemme_mmfd.encoder:FusionEncoder",
             "fusion of N registered encoders (any family, local safetensors weights, frozen, LoRA): "
             "per-branch normalisation, channel + spatial alignment to an anchor grid, a fusion strategy",
             example={"branches": [{"name": "cnn", "channels": [8, 16]},
                                   {"name": "cnn", "channels": [12, 24], "block": "res_conv"}],
                      "fusion": "gated"})


@hookimpl
def register_fusions(register) -> None:
    register("sum", f"{_FUSIONS}:sum_fusion", "element-wise sum of the aligned branch features")
    register("concat", f"{_FUSIONS}:concat_fusion", "concatenate branches, 1×1 conv projection back to the width")
    register("gated", f"{_FUSIONS}:gated_fusion", "learned per-branch, per-channel softmax weights")
    register("share_token", "flemme_mmfd.share_token:share_token_fusion",
             "MMFD: per depth a learned shared token set each branch cross-attends to; resize, "
             "per-branch MLP, sum, conv-GELU-conv-norm")


@hookimpl
def register_architectures(register) -> None:
    register("distill", "flemme_mmfd.distill:Distill",
             "two stages: train a (fused) teacher, then distil it into a student encoder with feature "
             "and optional logit distillation; predict = the student", task="segmentation",
             example={"teacher": "{encoder}"})  # flemme_core.testing: the family under test teaches


@hookimpl
def register_commands(register) -> None:
    register("distill-report", "flemme_mmfd.report:main",
             "teacher vs student of a distill checkpoint: size, CPU time, Dice")
