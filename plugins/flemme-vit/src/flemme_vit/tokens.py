"""What the two transformer families share: options, head counts, positions and the
attention mixer's place in the block (``mixer: attention | identity``).

The builders (patch stem, stages of token blocks, patch merging and expansion) and the
token plumbing are the core's :class:`flemme_core.tokens.TokenFamily`, shared with
every other token family.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from flemme_core.errors import ConfigError
from flemme_core.tokens import TokenFamily

TOKEN_NORMS = ("layer", "none")


@dataclasses.dataclass
class TokenOptions:
    """Options common to ``vit`` and ``swin`` (common fields live in EncoderConfig)."""

    heads: Any = None           # heads per level (list) or for every level (int); None: width // head_dim
    head_dim: int = 16          # channels per head when ``heads`` is not given
    mlp_ratio: float = 4.0      # MLP hidden width / block width
    qkv_bias: bool = True
    attn_dropout: float = 0.0   # dropout on attention weights (training only)
    pos_embed: bool = False     # learned absolute position grid after the stem, interpolated to the input size

    def validate(self) -> None:
        if self.head_dim < 1:
            raise ConfigError(f"model.encoder.head_dim must be a positive integer, got {self.head_dim}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"model.encoder.mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"model.encoder.attn_dropout must be in [0, 1), got {self.attn_dropout}")
        heads = self.heads
        if heads is None:
            return
        values = heads if isinstance(heads, (list, tuple)) else [heads]
        if not values or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in values):
            raise ConfigError(f"model.encoder.heads must be a positive integer or one per level, got {heads!r}")


class TransformerFamily(TokenFamily):
    """Attention blocks on the core's token builders; subclasses write :meth:`block`.

    ``mixer: identity`` (the "No-Mamba"-style control of Isensee et al., 2024) replaces the
    attention (its qkv and output projections, relative position bias, windows) by the
    identity: ``x + norm1(x)``; the norms, the MLP, drop-path and the context injection stay.
    """

    Options: ClassVar[type] = TokenOptions
    norms: ClassVar[tuple[str, ...] | None] = TOKEN_NORMS
    mixers: ClassVar[tuple[str, ...]] = ("attention", "identity")
    mixer_parameters: ClassVar[str] = r"(^|\.)attn\."

    def __init__(self, cfg):
        super().__init__(cfg)
        self.level_heads = self._resolve_heads(list(cfg.channels))

    def _resolve_heads(self, channels: list[int]) -> list[int]:
        heads = self.options.heads
        if heads is None:
            out = []
            for level, width in enumerate(channels):
                if width % self.options.head_dim:
                    raise ConfigError(
                        f"model.encoder: width {width} at level {level} is not a multiple of head_dim "
                        f"{self.options.head_dim}; set head_dim to a divisor of every width or give heads per level")
                out.append(width // self.options.head_dim)
            return out
        if isinstance(heads, int):
            heads = [heads] * len(channels)
        if len(heads) != len(channels):
            raise ConfigError(f"model.encoder.heads has {len(heads)} values but channels has {len(channels)} "
                              f"levels; give one number or one per level")
        for level, (h, width) in enumerate(zip(heads, channels)):
            if width % h:
                near = sorted({max(d for d in range(1, min(h, width) + 1) if width % d == 0),
                               min((d for d in range(h, width + 1) if width % d == 0), default=width)})
                raise ConfigError(f"model.encoder.heads: {h} heads do not divide width {width} at level {level}; "
                                  f"use a divisor of {width} (e.g. {' or '.join(map(str, near))})")
        return list(heads)

    def heads_for(self, width: int) -> int:
        """Heads of the level with this width; for other widths (fusion, pyramids) width // head_dim."""
        if width in self.cfg.channels:
            return self.level_heads[list(self.cfg.channels).index(width)]
        h = max(1, width // self.options.head_dim)
        while width % h:
            h -= 1
        return h

    def position_grid(self, patch_size: int) -> list[int] | None:
        if not self.options.pos_embed:
            return None
        return [max(1, s // patch_size) for s in self.cfg.image_size]
