"""Optimiser and learning-rate schedule of one training stage.

The schedule is a pure function of the step inside the stage (warm-up, then cosine,
linear, polynomial or constant decay), so resuming needs only the step: no scheduler
object state has to be saved or trusted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of a ``total``-step stage."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        decay = 1.0 - progress
    else:  # poly (nnU-Net's 0.9 power)
        decay = (1.0 - progress) ** 0.9
    return min_ratio + (1.0 - min_ratio) * decay


def warmup_steps(warmup: float, total: int) -> int:
    """``warmup`` is a step count, or a fraction of the stage when below 1."""
    return round(warmup * total) if warmup < 1 else int(warmup)


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: dict[str, Any],
                    betas: list[float], momentum: float) -> torch.optim.Optimizer:
    """AdamW (default), Adam or SGD over the given (trainable) parameters.

    Norm and bias parameters (1-D) get no weight decay, as is usual for AdamW.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        from ..errors import ConfigError

        raise ConfigError("the model has no trainable parameters in this stage; check begin_stage()")
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": settings["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    lr = settings["lr"]
    name = settings["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=tuple(betas))


class Schedule:
    """Sets each parameter group's lr for a step of the stage (call before ``optimizer.step``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, settings: dict[str, Any]):
        self.optimizer = optimizer
        self.base_lr = float(settings["lr"])
        self.total = int(settings["steps"])
        self.warmup = warmup_steps(float(settings["warmup"]), self.total)
        self.schedule = settings["schedule"]
        self.min_ratio = float(settings["min_lr"]) / self.base_lr if self.base_lr > 0 else 0.0

    def lr_at(self, step: int) -> float:
        return self.base_lr * lr_factor(step, self.total, self.warmup, self.schedule, self.min_ratio)

    def apply(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
