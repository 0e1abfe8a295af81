"""Tasks: what an architecture's output means, as registered objects rather than strings.

A :class:`Task` says what the trainer, the evaluator and ``flemme predict`` do with a model's
output, so none of them tests a task name:

* ``metrics``: the standard validation metrics it computes, and which way each is better;
* ``monitor`` (and its mode): the metric that picks the ``best`` checkpoint;
* ``prediction(logits)``: the network output -> what a user gets (class labels, an image);
* ``default_loss``: the losses used when neither the config nor the architecture names one;
* ``labels``: whether targets are class labels, so the output has one channel per class
  (else the output is an image with the input's channels).

Tasks are registered through the ``register_tasks`` hook (the core registers
``segmentation`` and ``reconstruction``; flemme-diffusion ``generation``) and an
architecture declares its task by name (``Architecture.task``); :func:`task_of` resolves the
built model's. An architecture whose task depends on its options (``distill`` trains an
``inner`` architecture) reports the built one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from .errors import ConfigError, unknown_name_message


class Task:
    """Base class; subclasses set the class attributes and override what differs."""

    name: str = ""
    description: str = ""
    #: standard metrics, in report order, and whether higher is better for each.
    metrics: ClassVar[dict[str, bool]] = {}
    #: the metric that picks `best` ("" when the architecture's own metrics decide).
    monitor: str = ""
    default_loss: tuple[dict[str, Any], ...] = ({"name": "mse", "weight": 1.0},)
    #: targets are class labels (one output channel per class).
    labels: bool = False
    #: modules a metric needs beyond flemme-core's own imports (checked before training starts).
    metric_requirements: ClassVar[dict[str, tuple[str, ...]]] = {}

    @property
    def mode(self) -> str:
        """``max`` or ``min``: the monitored metric's better direction."""
        return "max" if self.metrics.get(self.monitor, True) else "min"

    def higher_is_better(self, metric: str, default: bool = True) -> bool:
        return self.metrics.get(metric, default)

    def check_metric_names(self, names: Sequence[str] | None) -> list[str]:
        """The configured metric names, or the task's; unknown names list close matches."""
        if names is None:
            return list(self.metrics)
        for name in names:
            if self.metrics and name not in self.metrics:
                raise ConfigError(unknown_name_message(f"{self.name} metric in train.metrics:", name,
                                                       list(self.metrics)))
        return list(names)

    def check_metric_requirements(self, names: Sequence[str]) -> None:
        """Every module the chosen metrics import is importable, checked before training (a run
        that reaches its final validation and then fails writes nothing): one line saying what to
        install or which metric to drop."""
        import importlib.util

        for name in names:
            missing = [m for m in self.metric_requirements.get(name, ()) if importlib.util.find_spec(m) is None]
            if missing:
                others = [n for n in names if n != name]
                raise ConfigError(f"metric {name!r} needs {', '.join(missing)}, which is not installed; "
                                  f"pip install {' '.join(missing)} (flemme-core declares it), or leave the metric "
                                  f"out: --set train.metrics=[{','.join(others)}]")

    def prediction(self, output: Any) -> Any:
        """The network output -> the prediction a user gets; the identity for image outputs."""
        return output

    def metric_accumulator(self, settings: Any) -> Any:
        """Sums of the standard metrics over held-out batches (``update(out, target)``, ``result()``)."""
        from .training.metrics import ReconstructionMetrics

        return ReconstructionMetrics(len(settings.roi_size), settings.metrics)

    def out_channels(self, num_classes: int, in_channels: int) -> int:
        """Output channels a model of this task needs for data with these classes and channels."""
        return num_classes if self.labels else in_channels

    def example_target(self, x: Any, out_channels: int) -> Any:
        """A random target of the right kind for an input ``x`` (conformance tests)."""
        import torch

        return torch.randn(x.shape[0], out_channels, *x.shape[2:])

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class Segmentation(Task):
    name = "segmentation"
    description = "class labels: Dice, mIoU, HD95 (monitor dice); argmax; dice_ce"
    metrics: ClassVar[dict[str, bool]] = {"dice": True, "miou": True, "hd95": False}
    monitor = "dice"
    default_loss = ({"name": "dice_ce", "weight": 1.0},)
    labels = True
    metric_requirements: ClassVar[dict[str, tuple[str, ...]]] = {"hd95": ("scipy",)}  # MONAI's surface distances use scipy.ndimage

    def prediction(self, output: Any) -> Any:
        from .training.metrics import labels_from_logits

        return labels_from_logits(output)

    def metric_accumulator(self, settings: Any) -> Any:
        from .training.metrics import SegmentationMetrics

        return SegmentationMetrics(settings.num_classes, settings.metrics, settings.class_names, settings.spacing)

    def example_target(self, x: Any, out_channels: int) -> Any:
        import torch

        return torch.randint(0, max(out_channels, 2), (x.shape[0], 1, *x.shape[2:]))


class Reconstruction(Task):
    name = "reconstruction"
    description = "images: PSNR, SSIM, MSE (monitor psnr); mse"
    metrics: ClassVar[dict[str, bool]] = {"psnr": True, "ssim": True, "mse": False}
    monitor = "psnr"


class Generation(Task):
    """Generative models: their architecture computes its own metrics (``validation_metrics``)."""

    name = "generation"
    description = "generative models: the architecture's own metrics (validation_metrics)"


SEGMENTATION, RECONSTRUCTION, GENERATION = Segmentation(), Reconstruction(), Generation()
BUILTIN = (SEGMENTATION, RECONSTRUCTION, GENERATION)  # registered by flemme_core.builtin


def get_task(name: str | Task) -> Task:
    """The registered task of this name (a :class:`Task` passes through)."""
    if isinstance(name, Task):
        return name
    from .registry import get_registry

    component = get_registry().get("task", name)
    obj = component.load()
    task = obj if isinstance(obj, Task) else obj()
    if not isinstance(task, Task):
        from .errors import PluginError

        raise PluginError(f"task {name!r} from {component.provider} is a {type(task).__name__}, not a "
                          "flemme_core.tasks.Task; fix the plugin's register_tasks")
    return task


def task_of(model: Any) -> Task:
    """The task of a built architecture (its ``task`` attribute, a registered name or a Task)."""
    return get_task(model.task)
