"""The ``mamba`` block family (VMamba / VMambaU): selective-scan blocks on every level.

The core's :class:`~flemme_core.tokens.TokenFamily` builders (patch embedding stem,
stages, patch merging down and patch expansion up, in 2D and 3D) around
:class:`~flemme_mamba.block.MambaBlock`; every architecture builds its decoder from the
same blocks (a Mamba encoder gets a Mamba decoder).

``mixer: identity`` replaces the selective scan (or Mamba-2's SSD) by the identity and
keeps everything else of the block: norms, in_proj, depthwise conv, gate, out_proj, MLP,
context injection (:class:`~flemme_mamba.ssm.IdentityScanND`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from flemme_core.config import EncoderConfig, choice
from flemme_core.encoder import StagedEncoder, staged_encoder
from flemme_core.errors import ConfigError
from flemme_core.tokens import TokenFamily

from .block import MambaBlock
from .directions import SCAN_MODES
from .scan import BACKENDS, KERNEL_MAX_STATE, describe_backend
from .ssd import SSDMixerND
from .ssm import IdentityScanND, SelectiveScanND

SSM_KINDS = ("mamba1", "mamba2")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclasses.dataclass
class MambaOptions:
    d_state: int = 16             # N, the state size of every channel (kernels: <= 256, else the PyTorch scan)
    expand: float = 2.0           # inner width / block width
    dt_rank: Any = "auto"         # rank of the step-size projection; auto = ceil(width / 16)
    d_conv: int = 3               # depthwise conv kernel before the scan (odd; 1 = pointwise)
    scan: str = "cross+flip"      # single | single+flip | cross | cross+flip
    mlp_ratio: float = 4.0        # MLP hidden width / block width after each scan; 0 = no MLP
    backend: str = "auto"         # auto | mamba_ssm | cpp | torch (see flemme_mamba.scan); mamba1 only
    ssm: str = "mamba1"           # mamba1 (selective scan, A per channel and state) | mamba2 (SSD, A per head)
    head_dim: int = 16            # mamba2: channels per head (inner width = heads × head_dim)
    chunk_size: int = 64          # mamba2: steps per chunk of the SSD scan

    def validate(self) -> None:
        if not _positive_int(self.d_state):
            raise ConfigError(f"model.encoder.d_state must be a positive integer, got {self.d_state!r}")
        if self.d_state > KERNEL_MAX_STATE and self.backend in ("cpp", "mamba_ssm"):
            raise ConfigError(f"model.encoder.backend {self.backend!r} takes d_state up to {KERNEL_MAX_STATE}, "
                              f"got {self.d_state}; use backend: auto (the PyTorch scan) or a smaller d_state")
        if self.expand <= 0:
            raise ConfigError(f"model.encoder.expand must be positive, got {self.expand}")
        if self.dt_rank != "auto" and not _positive_int(self.dt_rank):
            raise ConfigError(f"model.encoder.dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
        if self.d_conv < 1 or self.d_conv % 2 == 0:
            raise ConfigError(f"model.encoder.d_conv must be odd and positive (same-size conv), got {self.d_conv}")
        choice(self.scan, SCAN_MODES, "model.encoder.scan")
        if self.mlp_ratio < 0:
            raise ConfigError(f"model.encoder.mlp_ratio must be >= 0 (0 = no MLP), got {self.mlp_ratio}")
        choice(self.backend, BACKENDS, "model.encoder.backend")
        choice(self.ssm, SSM_KINDS, "model.encoder.ssm")
        if not _positive_int(self.head_dim) or not _positive_int(self.chunk_size):
            raise ConfigError(f"model.encoder.head_dim and chunk_size must be positive integers, "
                              f"got {self.head_dim!r} and {self.chunk_size!r}")


class MambaFamily(TokenFamily):
    """VMamba blocks on channels-last tokens; patch merging / expansion between levels."""

    name = "mamba"
    Options = MambaOptions
    mixers: ClassVar[tuple[str, ...]] = ("scan", "identity")
    mixer_parameters: ClassVar[str] = r"(^|\.)ssm\.(x_proj_weight|dt_projs_weight|dt_projs_bias|dt_bias|A_log|D)$"

    def block(self, width: int, drop_path: float, index: int = 0) -> MambaBlock:
        o, c = self.options, self.cfg
        if self.identity_mixer:
            mixer: nn.Module = IdentityScanND(self.dims, width, expand=o.expand, d_conv=o.d_conv, scan=o.scan,
                                              dropout=c.dropout)
        elif o.ssm == "mamba2":
            mixer = SSDMixerND(self.dims, width, d_state=o.d_state, expand=o.expand, head_dim=o.head_dim,
                               d_conv=o.d_conv, scan=o.scan, chunk=o.chunk_size, dropout=c.dropout)
        else:
            mixer = SelectiveScanND(self.dims, width, d_state=o.d_state, expand=o.expand,
                                    dt_rank=None if o.dt_rank == "auto" else o.dt_rank, d_conv=o.d_conv,
                                    scan=o.scan, dropout=c.dropout, backend=o.backend)
        return MambaBlock(self.dims, width, mixer, mlp_ratio=o.mlp_ratio, norm=c.norm, act=c.act,
                          dropout=c.dropout, drop_path=drop_path, context_dim=c.context_dim)


_staged = staged_encoder(MambaFamily)


def encoder(cfg: EncoderConfig) -> StagedEncoder:
    """The registered factory: the staged encoder, with the scan kernel it runs as ``backend``."""
    enc = _staged(cfg)
    options = enc.blocks.options
    if enc.blocks.identity_mixer:
        enc.backend = "no scan (mixer: identity)"
    elif options.ssm == "mamba2":
        enc.backend = "Mamba-2 SSD in PyTorch matrix products (CPU and CUDA)"
    else:
        enc.backend = describe_backend(options.backend, options.d_state)
    return enc


encoder.family = MambaFamily  # type: ignore[attr-defined]
