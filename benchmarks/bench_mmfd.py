"""MMFD demo benchmark on real data: fuse two locally trained encoders, distil into a small CNN.

No foundation weights can be downloaded here, so the branches are trained by this script
on the shipped real data (stardist 2D nuclei: three quadrants train, the bottom-right one
is held out; see shared/data.md):

1. branch ``cnn`` (unet + cnn encoder) and branch ``swin`` (unet + swin encoder) are
   trained and saved as flemme checkpoints;
2. a ``distill`` model is built whose teacher is an ``mmfd`` encoder over both checkpoints
   (frozen; LoRA on the swin attention), fused with ``share_token``, under a unet decoder
   (by default refining the cnn branch: residual fusion, decoder from its checkpoint),
   and whose student is a small cnn; stage ``teacher`` then stage ``student`` are trained
   through the architecture contract (training_stages / begin_stage / training_loss);
3. every model is measured the same way (:mod:`flemme_mmfd.report`): parameters, CPU
   milliseconds per batch-1 forward of a 256×256 image, and held-out Dice.

    python benchmarks/bench_mmfd.py --steps 200 --threads 1 --out runs/bench-mmfd

The loop is deliberately the trainer's contract in miniature, so the numbers do not
depend on the state of ``flemme train``; ``plugins/flemme-mmfd/configs/`` holds the same
experiment as ``flemme train`` configs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from flemme_mmfd.report import format_report, measure

from flemme_core import build_model, save_model
from flemme_core.data import load_preset

BRANCHES = {
    "cnn": {"name": "cnn", "channels": [16, 32, 64, 128]},
    "swin": {"name": "swin", "channels": [32, 64, 128, 256], "num_blocks": [1, 1, 2, 1]},
}
STUDENT = {"name": "cnn", "channels": [8, 16, 32, 64], "block": "conv"}


def sampler(items: list[dict], patch: int, batch: int, seed: int):
    """Random patches with flips and 90° rotations from the training items (never the held-out one)."""
    rng = np.random.default_rng(seed)
    while True:
        xs, ys = [], []
        for _ in range(batch):
            item = items[rng.integers(len(items))]
            h, w = item["image"].shape[1:]
            i, j = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
            x = item["image"][:, i:i + patch, j:j + patch]
            y = item["label"][:, i:i + patch, j:j + patch]
            k = int(rng.integers(4))
            x, y = np.rot90(x, k, (1, 2)), np.rot90(y, k, (1, 2))
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        yield {"image": torch.as_tensor(np.stack(xs), dtype=torch.float32),
               "label": torch.as_tensor(np.stack(ys)).long()}


def fit(model, batches, steps: dict[str, int], lr: float, stage_lr: dict[str, float] | None = None,
        log_every: int = 50) -> dict[str, float]:
    """For each stage: begin_stage, AdamW on what requires grad, cosine decay, clipping
    (flemme_core.training.profiling.fit_in_memory); returns seconds per stage. ``stage_lr``
    overrides ``lr`` per stage (a teacher that starts from a trained branch is fine-tuned)."""
    from flemme_core.training.profiling import fit_in_memory

    report = fit_in_memory(model, lambda _step: next(batches), steps=steps, lr=lr, stage_lr=stage_lr,
                           schedule="cosine", weight_decay=1e-4, log=lambda m: print(m, flush=True),
                           log_every=log_every)
    return {stage: r["wall_s"] for stage, r in report.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench-mmfd")
    ap.add_argument("--steps", type=int, default=300, help="steps per branch and per distillation stage")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2, help="training threads")
    ap.add_argument("--time-threads", type=int, default=1, help="threads for the CPU timing")
    ap.add_argument("--fusion", default="share_token")
    ap.add_argument("--residual", default="cnn",
                    help="branch the teacher refines (residual fusion + decoder from its checkpoint, as "
                         "configs/distill-stardist.yaml); none: fusion and decoder from scratch on --anchor")
    ap.add_argument("--teacher-lr", type=float, default=5e-4, help="teacher-stage lr with --residual")
    ap.add_argument("--anchor", default="swin", help="with --residual none: finest | coarsest | cnn | swin | a stride")
    ap.add_argument("--reuse", action="store_true", help="reuse branch checkpoints already in --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_preset("stardist-nuclei-2d")
    size = [args.patch, args.patch]
    timings: dict[str, dict[str, float]] = {}

    branch_models, paths = {}, {}
    for i, (name, encoder) in enumerate(BRANCHES.items()):
        path = out / f"branch-{name}.safetensors"
        torch.manual_seed(i)
        if args.reuse and path.exists():
            from flemme_core import load_model

            branch_models[name] = load_model(path)
        else:
            print(f"branch {name}: training unet + {encoder['name']}", flush=True)
            model = build_model({"arch": "unet", "image_size": size, "encoder": encoder})
            timings[name] = fit(model, sampler(splits.train, args.patch, args.batch, seed=i),
                                {"main": args.steps}, args.lr)
            save_model(model, path)
            branch_models[name] = model
        paths[name] = str(path)

    anchor = int(args.anchor) if args.anchor.isdigit() else args.anchor
    grid = ({"anchor": anchor, "channels": [32, 64, 128, 256]} if args.residual == "none" else
            {"residual": args.residual})
    teacher = {"name": "mmfd", "fusion": args.fusion, **grid,
               "branches": [
                   {"id": "cnn", "checkpoint": paths["cnn"], "freeze": True},
                   {"id": "swin", "checkpoint": paths["swin"], "freeze": True,
                    "lora": {"rank": 4, "targets": ["qkv"]}}],
               "fusion_options": {"num_tokens": 32, "depth": 2} if args.fusion == "share_token" else {}}
    config = {"arch": "distill", "image_size": size, "encoder": STUDENT,
              "arch_options": {"teacher": teacher, "feature_weight": 10.0, "logit_weight": 1.0, "temperature": 2.0}}
    if args.residual != "none":
        config["arch_options"]["teacher_init"] = args.residual
    torch.manual_seed(7)
    model = build_model(config)
    print("distill: teacher stage, then student stage", flush=True)
    timings["distill"] = fit(model, sampler(splits.train, args.patch, args.batch, seed=7),
                             {"teacher": args.steps, "student": args.steps}, args.lr,
                             None if args.residual == "none" else {"teacher": args.teacher_lr})
    save_model(model, out / "distill.safetensors")

    rows = {"teacher": model.teacher, "student": model.student,
            **{f"branch {k}": m for k, m in branch_models.items()}}
    report = {name: measure(m, splits.held_out, splits.num_classes, args.time_threads, 10, size=[256, 256])
              for name, m in rows.items()}
    table = format_report(report, args.time_threads)
    header = (f"stardist-nuclei-2d, held out: {splits.held_out_description}\n"
              f"{args.steps} steps per branch and per stage, batch {args.batch} of {args.patch}², "
              f"fusion {args.fusion}, "
              f"{f'anchor {args.anchor}' if args.residual == 'none' else f'teacher refines {args.residual}'}; "
              f"CPU ms = median batch-1 forward of a 256×256 image, {args.time_threads} thread(s)")
    print(header)
    print(table)
    (out / "report.json").write_text(json.dumps({"args": vars(args), "rows": report, "train_seconds": timings},
                                                indent=2))


if __name__ == "__main__":
    main()
