"""Held-out metrics as sums and counts, so that they reduce exactly across processes.

Segmentation (MONAI): Dice and IoU per foreground class and their means (``dice``,
``miou``), and the 95th-percentile Hausdorff distance (``hd95``, in the image's
spacing units: mm for the presets with a spacing, else voxels). A class absent from an
image's label is skipped for that image (NaN in MONAI), not counted as perfect; a class in
the label that the model never predicts gets the image diagonal as its HD95 (MONAI returns
NaN, and skipping it would make missing a class improve the mean), and ``hd95_empty``
counts those (item, class) pairs. Reconstruction (MONAI): ``psnr`` and ``ssim`` with
the target's own intensity range, and ``mse``. Architectures that compute their own
metrics (``validation_metrics``) are averaged over batches the same way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

# Which metrics a task computes, their direction and the monitored one: flemme_core.tasks.

def distance_units(spacing: Sequence[float] | None) -> str:
    """The unit of HD95: the data's spacing units (mm for medical volumes) or voxels/pixels
    when the data has no physical spacing (all 1)."""
    return "mm" if spacing and any(float(s) != 1.0 for s in spacing) else "voxels"


def labels_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Class indices ``(B, 1, *S)``: argmax over channels, or sigmoid > 0.5 for one channel."""
    if logits.shape[1] == 1:
        return (logits > 0).long()
    return logits.argmax(dim=1, keepdim=True)


class MetricSums:
    """Named running sums and counts (NaN values are not counted)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, name: str, values: torch.Tensor) -> None:
        values = values.detach().double().flatten().cpu()
        ok = torch.isfinite(values)
        self.sums[name] = self.sums.get(name, 0.0) + float(values[ok].sum())
        self.counts[name] = self.counts.get(name, 0.0) + float(ok.sum())

    def merge(self, parts: Sequence[tuple[dict[str, float], dict[str, float]]]) -> None:
        """Replace these sums by the sum of ``parts`` (every process's ``(sums, counts)``)."""
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for part_sums, part_counts in parts:
            for name, value in part_sums.items():
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0.0) + part_counts[name]
        self.sums, self.counts = sums, counts

    def means(self) -> dict[str, float]:
        return {n: (self.sums[n] / self.counts[n] if self.counts[n] else float("nan")) for n in sorted(self.sums)}


class SegmentationMetrics:
    """Dice / IoU per foreground class and HD95 from logits and class-index labels."""

    def __init__(self, num_classes: int, names: Sequence[str], class_names: Sequence[str] = (),
                 spacing: Sequence[float] | None = None):
        self.num_classes = max(2, num_classes)
        self.names = list(names)
        self.class_names = list(class_names) if len(class_names) == self.num_classes else \
            [str(k) for k in range(self.num_classes)]
        self.spacing = list(spacing) if spacing else None
        self.sums = MetricSums()

    def update(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
        from monai.networks.utils import one_hot

        pred = one_hot(labels_from_logits(logits.float()).cpu(), self.num_classes)
        target = one_hot(label.long().cpu().clamp(0, self.num_classes - 1), self.num_classes)
        fg = self.class_names[1:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "dice" in self.names:
                dice = compute_dice(pred, target, include_background=False)  # (B, C-1), NaN if absent
                for k, name in enumerate(fg):
                    self.sums.add(f"dice/{name}", dice[:, k])
            if "miou" in self.names:
                iou = compute_iou(pred, target, include_background=False)
                for k, name in enumerate(fg):
                    self.sums.add(f"iou/{name}", iou[:, k])
            if "hd95" in self.names:
                hd = compute_hausdorff_distance(pred, target, include_background=False, percentile=95,
                                                spacing=self.spacing)
                # A class in the label that the model never predicts: MONAI gives NaN, which a mean would
                # skip (missing a class would improve the mean). It counts as the image diagonal instead
                # (the largest possible distance), and the number of such cases is reported.
                missed = (target[:, 1:].flatten(2).any(-1) & ~pred[:, 1:].flatten(2).any(-1))
                hd = torch.where(missed, torch.full_like(hd, self._diagonal(pred.shape[2:])), hd)
                self.sums.add("hd95_empty", missed.sum().reshape(1).double())
                for k, name in enumerate(fg):
                    self.sums.add(f"hd95/{name}", hd[:, k])

    def _diagonal(self, shape: Sequence[int]) -> float:
        """The image diagonal in the metric's units (spacing units, else voxels)."""
        spacing = self.spacing or [1.0] * len(shape)
        return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))

    def result(self) -> dict[str, float]:
        per = self.sums.means()
        empty = per.pop("hd95_empty", None)
        out: dict[str, float] = {}
        for key, prefix in (("dice", "dice/"), ("miou", "iou/"), ("hd95", "hd95/")):
            vals = [v for n, v in per.items() if n.startswith(prefix) and math.isfinite(v)]
            if key in self.names:
                out[key] = sum(vals) / len(vals) if vals else float("nan")
        if empty is not None:  # (item, class) pairs with the class in the label but never predicted
            out["hd95_empty"] = int(self.sums.sums.get("hd95_empty", 0.0))  # a count: printed and written as one
        out.update(per)
        return out


class ReconstructionMetrics:
    """PSNR / SSIM (MONAI) with each target's own intensity range, and MSE."""

    def __init__(self, dims: int, names: Sequence[str]):
        self.dims, self.names = dims, list(names)
        self.sums = MetricSums()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        from monai.metrics.regression import compute_ssim_and_cs

        pred, target = pred.float().cpu(), target.float().cpu()
        b = pred.shape[0]
        flat_t = target.reshape(b, -1)
        data_range = (flat_t.max(dim=1).values - flat_t.min(dim=1).values).clamp_min(1e-8)
        mse = ((pred - target) ** 2).reshape(b, -1).mean(dim=1)
        if "mse" in self.names:
            self.sums.add("mse", mse)
        if "psnr" in self.names:
            self.sums.add("psnr", 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12)))
        if "ssim" in self.names:
            values = []
            for i in range(b):  # per image: each has its own data range
                win = min(11, *[s - (1 - s % 2) for s in pred.shape[2:]])
                ssim, _ = compute_ssim_and_cs(pred[i : i + 1], target[i : i + 1], spatial_dims=self.dims,
                                              data_range=float(data_range[i]), kernel_type="gaussian",
                                              kernel_size=[max(3, win)] * self.dims,
                                              kernel_sigma=[1.5] * self.dims)
                values.append(ssim.reshape(1, -1).mean(dim=1))
            self.sums.add("ssim", torch.cat(values))

    def result(self) -> dict[str, float]:
        return self.sums.means()


class OwnMetrics:
    """Averages of whatever an architecture's ``validation_metrics`` returns per batch."""

    def __init__(self) -> None:
        self.sums = MetricSums()

    def update_dict(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.sums.add(name, torch.tensor([float(value)]))

    def result(self) -> dict[str, float]:
        return self.sums.means()
