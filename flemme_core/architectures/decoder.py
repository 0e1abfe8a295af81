"""The one decoder skeleton every encoder-decoder architecture shares.

Coarse to fine: up-sample with the family's ``up``, optionally concatenate the skip
feature, run the family's ``stage``. Returns every level's output (coarse to fine) so
that hierarchical architectures can read the pyramid without re-implementing the loop.
"""

from __future__ import annotations

import torch
from torch import nn

from ..encoder import Encoder


class Decoder(nn.Module):
    """Mirror of an encoder's levels, built from the encoder's own block family."""

    def __init__(self, encoder: Encoder, skip: bool = True, num_blocks: int | None = None,
                 out_width: int | None = None):
        super().__init__()
        ch, strides, blocks = encoder.feature_channels, encoder.feature_strides, encoder.blocks
        cfg_blocks = encoder.config.num_blocks
        default_blocks = cfg_blocks if isinstance(cfg_blocks, int) else None
        self.skip = skip
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.level_channels: list[int] = []
        self.level_strides: list[int] = []
        for i in reversed(range(len(ch) - 1)):
            n = num_blocks or default_blocks or encoder.config.num_blocks[i]  # type: ignore[index]
            self.ups.append(blocks.up(ch[i + 1], ch[i], strides[i + 1] // strides[i]))
            self.stages.append(blocks.stage(2 * ch[i] if skip else ch[i], ch[i], n))
            self.level_channels.append(ch[i])
            self.level_strides.append(strides[i])
        # Back to input resolution when the stem patchifies (patch expansion).
        width = out_width or ch[0]
        self.final_up = blocks.up(ch[0], width, strides[0]) if strides[0] > 1 else None
        self.out_channels = width if self.final_up is not None else ch[0]

    def forward(self, features: list[torch.Tensor], context: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Outputs of the bottleneck and of every up-stage, coarse to fine, then full resolution."""
        x = features[-1]
        levels = [x]
        for j, (up, stage) in enumerate(zip(self.ups, self.stages)):
            x = up(x)
            if self.skip:
                x = torch.cat([x, features[-2 - j]], dim=1)
            x = stage(x, context)
            levels.append(x)
        if self.final_up is not None:
            levels.append(self.final_up(x))
        return levels
