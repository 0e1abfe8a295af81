"""Size and speed of a model, measured the same way for every architecture.

``flemme eval`` reports them beside the metrics of an architecture's evaluation variants
(teacher vs student), and benchmarks use the same functions, so a figure in a README
and one printed by the CLI mean the same thing.
"""

from __future__ import annotations

import statistics
import time

import torch


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
