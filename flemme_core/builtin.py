"""The core's own components, registered through the public hooks like any plugin.

Import-cheap on purpose: factories are "module:attribute" strings.
"""

from __future__ import annotations

from .hookspecs import hookimpl

_ARCH = "flemme_core.architectures.encoder_decoder"


@hookimpl
def register_architectures(register) -> None:
    register("unet", f"{_ARCH}:UNet", "segmentation U-Net: encoder, same-family decoder with skips, head",
             task="segmentation")
    register("ae", f"{_ARCH}:AutoEncoder",
             "reconstruction autoencoder without skips; supervised: true maps input -> a different target",
             task="reconstruction")


@hookimpl
def register_tasks(register) -> None:
    from .tasks import BUILTIN  # import-cheap: no torch at module level

    for task in BUILTIN:
        register(task.name, f"flemme_core.tasks:{task.name.upper()}", task.description)


@hookimpl
def register_losses(register) -> None:
    mod = "flemme_core.losses"
    register("dice", f"{mod}:dice", "soft Dice (MONAI DiceLoss); softmax + one-hot, or sigmoid for 1 channel")
    register("dice_ce", f"{mod}:dice_ce", "Dice + cross-entropy (MONAI DiceCELoss)")
    register("ce", f"{mod}:ce", "cross-entropy on class-index targets (BCE for 1 channel)")
    register("bce", f"{mod}:bce", "BCE-with-logits on per-channel binary targets")
    register("mse", f"{mod}:mse", "mean squared error")
    register("l1", f"{mod}:l1", "mean absolute error")
    register("ssim", f"{mod}:ssim", "1 - SSIM (MONAI SSIMLoss), images in [0, data_range]")


@hookimpl
def register_commands(register) -> None:
    """The core's newer commands, each in its own module under ``flemme_core.commands``.

    e.g. ``register("compare", "flemme_core.commands.compare:compare", "...")``; the older
    commands (build, list, train, ...) are attached to the click group in ``cli.py``.
    """
    register("convert", "flemme_core.commands.convert:convert",
             "a published .pth/.bin weights file (torch.load weights_only) -> safetensors, atomically")
    register("export", "flemme_core.commands.export:export",
             "a checkpoint -> ONNX / torch.export .pt2 / TorchScript, dynamic axes, verified against eager")
    register("compare", "flemme_core.compare.cli:compare",
             "fair encoder studies: encoders x architectures x datasets x seeds, one run folder per cell, report")


@hookimpl
def register_datasets(register) -> None:
    try:
        from .data.catalog import register_presets
    except ImportError:  # the data package is optional in a minimal install
        return
    register_presets(register)
