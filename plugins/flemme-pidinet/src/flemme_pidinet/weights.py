"""Loading the official PiDiNet checkpoints (``table5_pidinet.pth`` ...) into the encoder.

The published files are ``torch.save({'epoch', 'state_dict'})`` of a ``DataParallel``
model: read with ``torch.load(weights_only=True)`` only (a file that needs full unpickling
is refused), ``state_dict`` unwrapped, the ``module.`` prefix dropped. A safetensors file
(e.g. written by ``flemme convert``) holds the same keys. Then:

* the initial block's RGB filters are mapped onto the configured input channels by
  segmentation_models_pytorch's rule (1 channel: the sum over RGB; more: cycled and scaled);
* with ``convert: true`` the pixel-difference weights become their plain kernels;
* any missing, unexpected or shape-mismatched key is one error line naming the first ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from flemme_core.errors import CheckpointError

from .network import PDCConv


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file (no pickle code run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist; give the local path of the checkpoint "
                              f"(e.g. table5_pidinet.pth from the PiDiNet release)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a corrupt file is the user's to fix
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {_first_line(exc)}") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refuses arbitrary objects: one line
        raise CheckpointError(f"{str(path)!r} cannot be read with torch.load(weights_only=True) (flemme never "
                              f"unpickles arbitrary objects): {_first_line(exc)}; save its state_dict alone "
                              f"or as safetensors") from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not (isinstance(data, Mapping) and all(isinstance(v, torch.Tensor) for v in data.values())):
        raise CheckpointError(f"{str(path)!r} holds no state dict of tensors (nor one under 'state_dict')")
    return {(k.removeprefix("module.")): v for k, v in data.items()}


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """smp's rule for pretrained first convolutions: 1 channel sums the RGB filters; n > 3
    channels cycle them, scaled by 3/n, so a grey image repeated n times gives the same output."""
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    idx = [i % have for i in range(in_channels)]
    return weight[:, idx] * (have / in_channels)


def load_official(encoder: nn.Module, path: str | Path) -> None:
    """Load an official PiDiNet checkpoint into ``encoder`` exactly (one-line error otherwise)."""
    state = read_state_dict(path)
    own = encoder.state_dict()
    if "init_block.weight" in state and "init_block.weight" in own:
        state["init_block.weight"] = adapt_input_channels(state["init_block.weight"], own["init_block.weight"].shape[1])
    for name, module in encoder.named_modules():
        key = f"{name}.weight"
        if isinstance(module, PDCConv) and key in state:
            state[key] = module.convert_weight(state[key])
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
                  if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{len(v)} {what} ({', '.join(v[:3])}{' ...' if len(v) > 3 else ''})"
                 for what, v in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
                 if v]
        raise CheckpointError(f"{str(path)!r} does not fit this pidinet encoder: {'; '.join(parts)}; check "
                              f"variant, dil, sa, channels and num_blocks against the checkpoint (table5_pidinet: "
                              f"variant pidinet, dil true, sa true)")
    encoder.load_state_dict(state, strict=True)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
