"""Loading the official PiDiNet checkpoints (``table5_pidinet.pth`` ...) into the encoder.

The published files are ``torch.save({'epoch', 'state_dict'})`` of a ``DataParallel``
model: read through the core (``torch.load(weights_only=True)`` only; a file that needs
full unpickling is refused; ``flemme convert`` makes safetensors of it), ``state_dict``
unwrapped, the ``module.`` prefix dropped. Then:

* the initial block's RGB filters are mapped onto the configured input channels by
  segmentation_models_pytorch's rule (1 channel: the sum over RGB);
* with ``convert: true`` the pixel-difference weights become their plain kernels;
* any missing, unexpected or shape-mismatched key is one error line naming the first ones.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from flemme_core.errors import CheckpointError
from flemme_core.weights import adapt_input_weight, compare_state, read_weights

from .network import PDCConv
from .options import VARIANTS


def load_official(encoder: nn.Module, path: str | Path) -> None:
    """Load an official PiDiNet checkpoint into ``encoder`` exactly (one-line error otherwise)."""
    state = {k.removeprefix("module."): v for k, v in read_weights(path).items()}
    own = encoder.state_dict()
    if "init_block.weight" in state and "init_block.weight" in own:
        state["init_block.weight"] = adapt_input_weight(state["init_block.weight"], own["init_block.weight"].shape[1])
    for name, module in encoder.named_modules():
        key = f"{name}.weight"
        if isinstance(module, PDCConv) and key in state:
            state[key] = module.convert_weight(state[key])
    report = compare_state(encoder, state, repr(str(path)))
    if not report.ok:
        raise CheckpointError(f"weights do not fit this pidinet encoder: {report.summary()}; {_hint(state)}")
    encoder.load_state_dict(state, strict=True)


def _hint(state: dict) -> str:
    """What the file looks like: its width C (the variant) and whether it has CDCM / CSAM."""
    init = state.get("init_block.weight")
    if init is None:
        return "this is not a PiDiNet checkpoint (no init_block.weight)"
    width = int(init.shape[0])
    variant = next((name for name, (c, _) in VARIANTS.items() if c == width), None)
    dil = state.get("dilations.0.conv1.weight")
    parts = [f"variant: {variant}" if variant else f"channels: [{width}, {2 * width}, {4 * width}, {4 * width}]",
             f"dil: {int(dil.shape[0]) if dil is not None else 'false'}",
             f"sa: {'true' if 'attentions.0.conv1.weight' in state else 'false'}"]
    return f"the file looks like {', '.join(parts)} (check also pdcs and num_blocks)"
