"""The architecture contract: how the trainer, evaluator and CLI talk to any model.

An architecture wraps an :class:`~flemme_core.encoder.Encoder` and never names a family.
The trainer knows nothing else about it: the architecture says how a batch becomes a
loss (:meth:`Architecture.training_loss`), what inference returns
(:meth:`Architecture.predict`) and what a dummy input looks like. Architectures with
several outputs (pyramids) or stages (distillation) override these, not the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import ModelConfig, encoder_config_from_dict, parse_options
from ..encoder import Encoder

Batch = Mapping[str, Any]
BuildEncoder = Callable[..., Encoder]


class Architecture(nn.Module):
    """Base class: ``forward`` gives training outputs, ``predict`` the inference output."""

    #: the registered task (``flemme_core.tasks``): its metrics, monitor, prediction and default loss.
    task: ClassVar[str] = "segmentation"
    #: losses used when the config names none; ``None``: the task's default loss.
    default_loss: ClassVar[list[dict[str, Any]] | None] = None
    #: dataclass of this architecture's ``arch_options`` (unknown keys are errors).
    Options: ClassVar[type] = dataclasses.make_dataclass("NoOptions", [])

    def __init__(self, config: ModelConfig, build_encoder: BuildEncoder | None):
        """``build_encoder`` is ``None`` for an architecture registered with ``encoder=False``
        (a whole network that builds its own layers): ``self.encoder`` is then ``None``."""
        super().__init__()
        self.config = config
        self.options = parse_options(self.Options, config.arch_options, f"model.arch_options ({config.arch})")
        self.encoder = build_encoder(**self.encoder_overrides()) if build_encoder is not None else None

    @classmethod
    def configured_task(cls, arch_options: Mapping[str, Any]) -> str:
        """The task a model built with these ``arch_options`` will have, known before building
        it (the trainer sizes the output from it); an architecture whose task depends on its
        options (one wrapping another architecture) overrides this and sets ``self.task``."""
        return cls.task

    def encoder_overrides(self) -> dict[str, Any]:
        """What this architecture changes in its encoder (e.g. ``context_dim`` for diffusion)."""
        return {}

    # -- what the trainer calls ----------------------------------------------------
    def inputs_and_target(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The network input and the loss target of a batch (``image``/``label``)."""
        return batch["image"], batch["label"]

    def training_loss(self, batch: Batch, criterion: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch and scalars to log; the default is ``criterion(self(x), y)``."""
        x, y = self.inputs_and_target(batch)
        loss = criterion(self(x), y)
        return loss, {}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The single full-resolution output used for inference and evaluation."""
        out = self(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A dummy input of the configured size (``flemme build`` runs one forward on it)."""
        return torch.randn(batch_size, self.config.in_channels, *self.config.image_size)

    def training_stages(self) -> list[str]:
        """Names of the stages the trainer runs in order (distillation: teacher, student)."""
        return ["main"]

    def begin_stage(self, name: str) -> None:
        """Called by the trainer before a stage: freeze/unfreeze parameters here.

        The trainer then optimises the parameters with ``requires_grad`` and calls
        :meth:`training_loss`, which may read ``self.stage``.
        """
        self.stage = name

    def validation_metrics(self, batch: Batch) -> dict[str, float] | None:
        """Metrics of one held-out batch if this architecture computes its own
        (generative models); ``None`` lets the evaluator use the task's standard metrics."""
        return None

    def dataset_metrics(self, held_out: Any, train: Any) -> dict[str, float] | None:
        """Metrics that need whole datasets at once, for ``flemme eval`` (generative models:
        sample quality against the held-out items, with the training items as a control).
        Both are sequences of ``{"image", ...}`` items. ``None``: per-batch metrics apply."""
        return None

    def evaluation_variants(self) -> dict[str, Architecture]:
        """Sub-models that ``flemme eval`` measures side by side with the same data and
        metrics, plus parameters and CPU time (distillation: teacher and student; the first
        is the reference of the ratios). Empty: only the model itself is evaluated."""
        return {}

    def extra_components(self) -> list[tuple[str, str]]:
        """(kind, name) of registered components used beyond the config's encoder and losses
        (a student encoder, a fusion); checkpoints record their plugins."""
        return []

    def standalone_config(self) -> ModelConfig:
        """The config a checkpoint stores: it rebuilds this model from the checkpoint alone
        (weights named only to initialise a part, e.g. a fusion branch's checkpoint, are not
        needed once the checkpoint holds them). Architectures with such options override it."""
        encoder = getattr(self, "encoder", None)
        spec = encoder.standalone_config() if isinstance(encoder, Encoder) else None
        return self.config if spec is None else dataclasses.replace(self.config, encoder=encoder_config_from_dict(spec))

    def summary_extra(self) -> dict[str, Any]:
        """Architecture-specific facts for the build summary."""
        return {}
