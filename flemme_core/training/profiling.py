"""Size and speed of a model, measured the same way for every architecture and benchmark.

``flemme eval`` reports them beside the metrics of an architecture's evaluation variants
(teacher vs student), and every script in ``benchmarks/`` times with these functions, so a
figure in a README and one printed by the CLI mean the same thing. For a benchmark:

* :func:`timed_training_steps` -- seconds per training step (forward, loss, backward, AdamW
  update) of a flemme model *or* a peer network (MONAI's), first steps untimed, with wall
  and CPU time and peak memory. Run each case in its own process for clean peak memory;
* :func:`fit_in_memory` -- train on in-memory batches for a number of steps or a CPU budget,
  stage by stage (``training_stages``/``begin_stage``), with the trainer's recipe (AdamW,
  warm-up, cosine or constant, gradient clipping); for experiments that compare models at an
  equal budget without a dataset preset (``flemme train`` is the trainer for everything else);
* :func:`cpu_latency_ms` -- inference latency; :func:`count_parameters`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

Batch = Mapping[str, torch.Tensor]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cpu_latency_ms(model: torch.nn.Module, example: torch.Tensor, repeats: int = 20, warmup: int = 3,
                   threads: int | None = 1) -> float:
    """Median wall time of ``model.predict(example)`` on CPU in milliseconds, after warm-up,
    with a fixed number of threads (1 by default: comparable across machines and runs)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    device = next(model.parameters(), torch.empty(0)).device
    model = model.cpu().eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                model.predict(example)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
        model.to(device)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (the trainer's measure, on CPU)."""
    from .setup import peak_memory_mb

    return peak_memory_mb(torch.device("cpu")) or 0.0


def step_loss(model: torch.nn.Module, batch: Batch, criterion: Callable[..., torch.Tensor] | None = None
              ) -> torch.Tensor:
    """The loss of one batch: a flemme architecture's ``training_loss`` (its own target and
    losses, ``criterion`` or its default), or ``criterion(model(image), label)`` for a plain
    network (a peer such as MONAI's)."""
    from ..architectures.base import Architecture

    if hasattr(model, "training_loss"):  # a flemme architecture, or a peer wrapped to speak its contract
        if criterion is None:
            if not isinstance(model, Architecture):
                raise ValueError("give the criterion of a model that is not a flemme architecture")
            from ..build import loss_spec
            from ..losses import build_loss

            criterion = build_loss(loss_spec(model), model.config.out_channels, model.config.dims)
        return model.training_loss(batch, criterion)[0]
    if criterion is None:
        raise ValueError("a plain network needs a criterion(output, label)")
    return criterion(model(batch["image"]), batch["label"])


@dataclass
class StepTimes:
    """Per-step timings of :func:`timed_training_steps` (the warm-up steps excluded)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    step_rss_mb: float = 0.0  # peak growth during the steps (model, activations, optimiser state)
    loss: float = float("nan")

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def timed_training_steps(model: torch.nn.Module, batch: Batch | Callable[[int], Batch], *,
                         criterion: Callable[..., torch.Tensor] | None = None, steps: int = 6, warmup: int = 1,
                         lr: float = 1e-3, threads: int | None = None) -> StepTimes:
    """Time ``steps`` training steps (zero_grad, :func:`step_loss`, backward, AdamW step) after
    ``warmup`` untimed ones (allocator and optimiser-state warm-up). ``batch`` is one batch or
    ``batch(step)``. ``threads`` sets torch's CPU threads for the measurement."""
    if threads:
        torch.set_num_threads(threads)
    get = batch if callable(batch) else (lambda _step: batch)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    base = peak_rss_mb()
    out = StepTimes()
    for i in range(warmup + steps):
        c0, w0 = time.process_time(), time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = step_loss(model, get(i), criterion)
        loss.backward()
        opt.step()
        if i >= warmup:
            out.wall.append(time.perf_counter() - w0)
            out.cpu.append(time.process_time() - c0)
    out.loss = float(loss.detach())
    out.peak_rss_mb = peak_rss_mb()
    out.step_rss_mb = out.peak_rss_mb - base
    return out


def fit_in_memory(model: torch.nn.Module, batches: Callable[[int], Batch], *,
                  steps: Mapping[str, int] | int | None = None, cpu_budget_s: float | None = None,
                  lr: float = 1e-3, stage_lr: Mapping[str, float] | None = None, warmup: int = 0,
                  schedule: str = "constant", weight_decay: float = 1e-4, clip: float = 1.0,
                  criterion: Callable[..., torch.Tensor] | None = None,
                  log: Callable[[str], None] | None = None, log_every: int = 100) -> dict[str, dict[str, Any]]:
    """Train on in-memory batches (``batches(step)``), stage by stage as the trainer does.

    Per stage (``model.training_stages()``, ``begin_stage``; one ``main`` stage for a plain
    network): AdamW over what requires grad at ``stage_lr[stage]`` or ``lr``, linear warm-up
    over ``warmup`` steps, then ``constant`` or ``cosine`` decay, gradient clipping, until
    ``steps`` (a number, or per stage) or ``cpu_budget_s`` CPU seconds (per stage) are spent.
    Returns per stage: steps, cpu_s, wall_s, cpu_s_per_step, final_loss.
    """
    if steps is None and cpu_budget_s is None:
        raise ValueError("give steps or cpu_budget_s")
    stages = list(model.training_stages()) if hasattr(model, "training_stages") else ["main"]
    report: dict[str, dict[str, Any]] = {}
    done = 0
    for stage in stages:
        if hasattr(model, "begin_stage"):
            model.begin_stage(stage)
        n = steps if isinstance(steps, int) or steps is None else steps.get(stage, steps.get("main", 0))
        params = [p for p in model.parameters() if p.requires_grad]
        base = (stage_lr or {}).get(stage, lr)
        opt = torch.optim.AdamW(params, lr=base, weight_decay=weight_decay)
        model.train()
        cpu0, wall0, step, last = time.process_time(), time.perf_counter(), 0, float("nan")
        while (n is None or step < n) and (cpu_budget_s is None or time.process_time() - cpu0 < cpu_budget_s):
            factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
            if schedule == "cosine" and n:
                factor *= 0.5 * (1 + math.cos(math.pi * step / max(n, 1)))
            for group in opt.param_groups:
                group["lr"] = base * factor
            loss = step_loss(model, batches(done + step), criterion)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            step += 1
            last = float(loss.detach())
            if log is not None and (step % log_every == 0 or step == n):
                log(f"  [{stage}] step {step}{f'/{n}' if n else ''} loss {last:.4f} "
                    f"cpu {time.process_time() - cpu0:.0f}s")
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        done += step
        report[stage] = {"steps": step, "cpu_s": cpu, "wall_s": wall, "cpu_s_per_step": cpu / max(step, 1),
                         "final_loss": last}
    return report
