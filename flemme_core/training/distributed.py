"""torch.distributed plumbing: process group from torchrun's environment, reductions, launch.

``python -m flemme_core train ...`` under ``torchrun`` finds ``WORLD_SIZE``/``RANK`` in
the environment and joins the group (gloo on CPU, NCCL on CUDA); ``flemme train
--nproc N`` starts torchrun itself (:mod:`.launcher`). Only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistContext:
    """Join the process group torchrun describes (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                       backend=dist.get_backend(), owns_group=owns)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a float64 tensor over ranks (in place on a copy; identity for one process)."""
    if not ctx.enabled:
        return values
    device = torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else torch.device("cpu")
    out = values.detach().to(device=device, dtype=torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def any_flag(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if it is true on any rank (for stopping together)."""
    if not ctx.enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0]), ctx).item() > 0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's ``obj`` (small JSON-like values, e.g. metric sums), on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
