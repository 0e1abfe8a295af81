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
        raise CheckpointError(f"weights do not fit this pidinet encoder: {report.summary()}; check variant, dil, "
                              f"sa, channels and num_blocks against the checkpoint (table5_pidinet: variant "
                              f"pidinet, dil true, sa true)")
    encoder.load_state_dict(state, strict=True)
