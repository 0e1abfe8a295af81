"""The trainer's overhead: seconds per training step and peak memory of ``flemme train``
against a plain hand-written MONAI loop with the same network, data, loss and optimiser.

    python benchmarks/bench_trainer.py                       # the demo setup (MNI152 3D, nilearn)
    python benchmarks/bench_trainer.py --config examples/configs/synthetic-2d.yaml --steps 30
    python benchmarks/bench_trainer.py --threads 2 --repeats 3

Each measurement runs in its own process (peak RSS is per process; CUDA peak memory via
torch.cuda.max_memory_allocated), variants alternate so that a busy machine slows both
alike, and the per-step time is the median over steps after the first three (no
validation, no checkpoint in either). Goal: flemme / plain <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "examples" / "configs" / "mni152-tissue-3d.yaml"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_flemme(config: str, steps: int, out: str) -> dict:
    from flemme_core.training import Trainer, load_run_config

    run = load_run_config(config, {"train.steps": steps, "train.val_every": 0, "train.output": out,
                                   "train.progress": False})
    trainer = Trainer(run, overwrite=True, quiet=True)
    trainer.fit()  # ends with one held-out validation and a checkpoint, outside the step timings
    return {"seconds_per_step": _median(trainer.step_seconds[3:]), "peak_mb": _peak_mb(trainer.device)}


def plain_monai_loop(run, model, steps: int | None = None, max_seconds: float | None = None,
                     schedule: str = "cosine") -> list[float]:
    """A textbook MONAI loop: DataLoader (random sampling), DiceCELoss, AdamW, clipping, and either
    warm-up + cosine over ``steps`` or a constant learning rate. Trains ``model`` in place until
    ``steps`` steps or ``max_seconds`` of step time; returns the per-step seconds.
    ``run`` is a flemme RunConfig: its data section and train.lr/weight_decay/warmup/clip/seed."""
    import math

    import torch
    from monai.data import DataLoader, list_data_collate
    from monai.losses import DiceCELoss

    from flemme_core.data import build_datasets, data_config_from_dict
    from flemme_core.training.setup import pick_device

    cfg = run.train
    device = pick_device(cfg.device)
    model.to(device)
    train_ds, _, _ = build_datasets(run.data, seed=cfg.seed)
    data = data_config_from_dict(run.data)
    draws = (steps or 10**6) * data.batch_size
    sampler = torch.utils.data.RandomSampler(train_ds, replacement=True, num_samples=draws)
    loader = DataLoader(train_ds, batch_size=data.batch_size, sampler=sampler, num_workers=data.num_workers,
                        collate_fn=list_data_collate, drop_last=True)  # one training volume: draw with replacement
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if schedule == "cosine":
        warm = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    times: list[float] = []
    model.train()
    tick = time.perf_counter()
    for batch in loader:
        x, y = batch["image"].to(device), batch["label"].to(device)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        sched.step()
        float(loss)  # both loops read the loss every step
        now = time.perf_counter()
        times.append(now - tick)
        tick = now
        if (steps and len(times) >= steps) or (max_seconds and sum(times) >= max_seconds):
            break
    return times


def run_plain(config: str, steps: int) -> dict:
    """The plain loop with the same network, data, loss and optimiser as the flemme run."""
    import torch

    from flemme_core.build import build_model
    from flemme_core.data import build_datasets
    from flemme_core.training import load_run_config
    from flemme_core.training.setup import complete_model_config, pick_device

    run = load_run_config(config)
    torch.manual_seed(run.train.seed)
    _, _, info = build_datasets(run.data, seed=run.train.seed)
    model = build_model(complete_model_config(run.model, info))
    times = plain_monai_loop(run, model, steps=steps)
    return {"seconds_per_step": _median(times[3:]), "peak_mb": _peak_mb(pick_device(run.train.device))}


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant == "flemme":
        result = run_flemme(args.config, args.steps, args.out)
    else:
        result = run_plain(args.config, args.steps)
    print("RESULT " + json.dumps(result))


def measure(variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--config", str(args.config), "--steps", str(args.steps),
           "--out", str(args.out)] + (["--threads", str(args.threads)] if args.threads else [])
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="/tmp/flemme-bench-trainer")
    parser.add_argument("--child", dest="variant", choices=["flemme", "plain"])
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    results: dict[str, list[dict]] = {"plain": [], "flemme": []}
    for i in range(args.repeats):
        for variant in (("plain", "flemme") if i % 2 == 0 else ("flemme", "plain")):
            results[variant].append(measure(variant, args))
    rows = {v: {"s": _median([r["seconds_per_step"] for r in rs]), "mb": max(r["peak_mb"] for r in rs)}
            for v, rs in results.items()}
    print(f"config {Path(args.config).name}, {args.steps} steps x {args.repeats} runs each, "
          f"threads {args.threads or 'default'}")
    print(f"{'loop':<22} {'s/step (median)':>16} {'peak memory MB':>15}")
    for v, label in (("plain", "plain MONAI loop"), ("flemme", "flemme train")):
        print(f"{label:<22} {rows[v]['s']:>16.4f} {rows[v]['mb']:>15.0f}")
    print(f"{'ratio flemme/plain':<22} {rows['flemme']['s'] / rows['plain']['s']:>16.3f} "
          f"{rows['flemme']['mb'] / rows['plain']['mb']:>15.3f}")


if __name__ == "__main__":
    main()
