"""Plain vs hierarchical, same budget, several seeds: the claim of Flemme's pyramid, measured.

Segmentation (``seg``): ``unet`` vs ``hunet`` for each encoder family on the stardist 2D
nuclei (train on three quadrants, evaluate on the held-out bottom-right one, whole, by
sliding window); ``tissue``: 4-class tissue on MNI152 2 mm axial slices (posterior halves
train, anterior halves evaluate). Reconstruction (``recon``): ``ae`` vs ``hae`` (any family) on Colin27 T1 axial slices with
Gaussian noise of std 0.1 on images scaled to [0, 1] (noisy input -> clean target;
``--recon-task kspace``: 4x equispaced Cartesian k-space under-sampling, zero-filled ->
fully sampled); train z mod 10 in 0..6, evaluate z mod 10 == 8.

Every run is a plain ``flemme train <config.yaml>`` (the config is written next to the
run, so each number can be reproduced with the printed command). "Same budget" means
the same encoder, steps, batch, patch, optimiser and schedule for the plain and the
hierarchical model; the hierarchical one has more parameters and compute per step,
which the table reports. Finished runs are reused (``summary.json``), so an
interrupted experiment continues where it stopped; seeds are the outer loop, so a
partial experiment still covers every configuration.

    python plugins/flemme-pyramid/experiments/pyramid_experiment.py --out runs/pyramid-experiment
    python plugins/flemme-pyramid/experiments/pyramid_experiment.py --table-only   # rebuild the table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SEG_METRICS = ("dice", "miou")
RECON_METRICS = ("psnr", "ssim")
PAIRS = {"seg": ("unet", "hunet"), "tissue": ("unet", "hunet"), "recon": ("ae", "hae")}
#: per-family encoder widths that fit a 2-core CPU budget (the attention families need
#: widths their head size divides). Plain and hierarchical models of a family share them.
CHANNELS = {"cnn": [8, 16, 32, 64], "swin": [16, 32, 64, 128], "mamba": [16, 32, 64, 128]}
PATCH: dict[str, int] = {}


def run_config(task: str, family: str, arch: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The whole ``flemme train`` config of one run."""
    size = args.patch or PATCH.get(family, 64)
    patch = [96, 48] if task == "tissue" else [size, size]  # MNI152 2 mm half-slices are ~99x58
    channels = args.channels or CHANNELS.get(family, [16, 32, 64, 128])
    model: dict[str, Any] = {"arch": arch, "image_size": patch, "in_channels": 1,
                             "encoder": {"name": family, "channels": channels, "num_blocks": args.num_blocks}}
    train = {"steps": args.steps, "lr": args.lr, "seed": seed, "threads": args.threads, "val_every": 0,
             "log_every": 10, "progress": False, "deterministic": True, "device": "cpu"}
    if task == "seg":
        model.update(out_channels=2, loss=[{"name": "dice_ce"}])
        data = {"preset": "stardist-nuclei-2d", "patch_size": list(patch), "batch_size": args.batch,
                "transforms": {"flip": 0.5, "rotate90": 0.5}}
        train["metrics"] = list(SEG_METRICS)
    elif task == "tissue":
        model.update(out_channels=4, loss=[{"name": "dice_ce"}])
        data = {"preset": "mni152-tissue-2d", "patch_size": list(patch), "batch_size": args.batch}
        train["metrics"] = list(SEG_METRICS)
    else:
        # U-shaped (skips), as Flemme's reconstruction encoders (UNet, SwinU, MambaU): an AE
        # through a stride-8 bottleneck alone cannot restore image detail
        model.update(out_channels=1, loss=[{"name": "l1"}], arch_options={"supervised": True, "skip": True})
        # Denoising by default: the data layer makes the pair *after* cropping, so k-space
        # under-sampling of a 64x64 training patch aliases with period 64 while the whole
        # held-out slice aliases with period ~217: patch training does not transfer (see README)
        pair = ({"kspace": {"pattern": "equispaced", "acceleration": 4}} if args.recon_task == "kspace"
                else {"denoise": {"sigma": args.sigma}})
        data = {"preset": "colin27-t1-2d", "patch_size": list(patch), "batch_size": args.batch, "transforms": pair}
        train["metrics"] = list(RECON_METRICS)
    if arch in ("hunet", "hae"):
        model["arch_options"] = {**model.get("arch_options", {}), "fusion_init": args.fusion_init}
    return {"model": model, "data": data, "train": train}


def run_one(name: str, config: dict[str, Any], out: Path, train: bool = True) -> dict[str, Any]:
    """Train one configuration with the CLI (or reuse its finished run); returns its row."""
    import yaml

    cfg_path, run_dir = out / "configs" / f"{name}.yaml", out / "runs" / name
    text = yaml.safe_dump(config, sort_keys=False)
    summary_path = run_dir / "summary.json"
    if train and not (summary_path.exists() and cfg_path.exists() and cfg_path.read_text() == text):
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(text)
        cmd = [sys.executable, "-m", "flemme_core", "train", str(cfg_path), "-q", "-o", str(run_dir), "--overwrite"]
        print("$ flemme train", cfg_path, "-q -o", run_dir, "--overwrite", flush=True)
        started = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(config["train"]["threads"])}
        subprocess.run(cmd, check=True, env=env)
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    summary = json.loads(summary_path.read_text())
    return {"name": name, "final": summary["final"], "seconds": summary["seconds"], "steps": summary["steps"],
            "held_out": summary.get("held_out"), "parameters": _parameters(run_dir)}


def _parameters(run_dir: Path) -> int | None:
    from flemme_core.checkpoint import read_metadata

    path = run_dir / "last.safetensors"
    return read_metadata(path)["parameters"] if path.exists() else None


def degraded_input_baseline(args: argparse.Namespace) -> dict[str, float]:
    """PSNR/SSIM of the network input itself (noisy or zero-filled) on the held-out slices: the floor."""
    import torch

    from flemme_core.data import build_datasets
    from flemme_core.training.metrics import ReconstructionMetrics

    data = run_config("recon", "cnn", "ae", 0, args)["data"]
    _, val_ds, _ = build_datasets({**data, "cache": False}, seed=0)
    metrics = ReconstructionMetrics(2, RECON_METRICS)
    for i in range(len(val_ds)):
        item = val_ds[i]
        metrics.update(torch.as_tensor(item["image"])[None], torch.as_tensor(item["label"])[None])
    return metrics.result()


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(rows: list[dict[str, Any]], baseline: dict[str, float] | None = None) -> str:
    """Markdown: mean ± std per (task, family, arch) and the relative change plain -> hierarchical."""
    lines = ["| task | encoder | arch | seeds | metric 1 | metric 2 | params | s/run |",
             "|---|---|---|---|---|---|---|---|"]
    gains: dict[str, list[float]] = {}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["family"], row["arch"]), []).append(row)
    for task, (plain, hier) in PAIRS.items():
        names = RECON_METRICS if task == "recon" else SEG_METRICS
        for family in sorted({f for t, f, _ in groups if t == task}):
            stats = {}
            for arch in (plain, hier):
                group = groups.get((task, family, arch), [])
                if not group:
                    continue
                stats[arch] = {m: _mean_std([r["final"].get(m) for r in group]) for m in names}
                cells = [f"{m} {stats[arch][m][0]:.4f} ± {stats[arch][m][1]:.4f}" for m in names]
                secs = statistics.fmean(r["seconds"] for r in group)
                lines.append(f"| {task} | {family} | {arch} | {len(group)} | {cells[0]} | {cells[1]} | "
                             f"{group[0]['parameters'] or '?':,} | {secs:.0f} |")
            if task == "recon" and baseline and family == min({f for t, f, _ in groups if t == task}):
                lines.append(f"| recon | — | degraded input (no network) | | psnr {baseline['psnr']:.4f} | "
                             f"ssim {baseline['ssim']:.4f} | | |")
            if plain in stats and hier in stats:
                cells = []
                by_seed = {arch: {r["seed"]: r["final"] for r in groups[(task, family, arch)]} for arch in (plain, hier)}
                paired = sorted(set(by_seed[plain]) & set(by_seed[hier]))
                for m in names:
                    a, b = stats[plain][m][0], stats[hier][m][0]
                    rel = 100.0 * (b - a) / abs(a) if a else math.nan
                    gains.setdefault(m, []).append(rel)
                    diffs = [by_seed[hier][s][m] - by_seed[plain][s][m] for s in paired]
                    d_mean, d_std = _mean_std(diffs)
                    wins = sum(d > 0 for d in diffs)
                    cells.append(f"{m} {rel:+.2f}% (paired Δ {d_mean:+.4f} ± {d_std:.4f}, better in {wins}/{len(diffs)})")
                lines.append(f"| {task} | {family} | **{hier} vs {plain}** | | {cells[0]} | {cells[1]} | | |")
    if gains:
        lines.append("")
        lines.append("Average relative change, hierarchical vs plain (paper's claim in brackets): " + ", ".join(
            f"{m} {statistics.fmean(v):+.2f}% [{ {'dice': '+5.60', 'miou': '+7.81', 'psnr': '+5.57', 'ssim': '+8.22'}[m]}%]"
            for m, v in gains.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/pyramid-experiment", help="folder for configs, runs and the table")
    parser.add_argument("--combos", default="seg:cnn,recon:cnn,seg:swin,seg:mamba,tissue:cnn,tissue:swin",
                        help="task:family pairs, run in this order (all seeds of one before the next)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=0, help="patch side (default: 64)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--channels", type=lambda s: [int(c) for c in s.split(",")], default=None,
                        help="encoder widths for every family (default: per family, see CHANNELS)")
    parser.add_argument("--num-blocks", type=int, default=1)
    parser.add_argument("--recon-task", default="denoise", choices=["denoise", "kspace"])
    parser.add_argument("--sigma", type=float, default=0.1, help="noise std for --recon-task denoise")
    parser.add_argument("--fusion-init", default="plain", choices=["plain", "random"],
                        help="hierarchical models' fusion init (random: Flemme's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: on a shared CPU, 2 threads were 4x slower)")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from flemme_core.registry import get_registry

    installed = set(get_registry().components("encoder"))
    rows: list[dict[str, Any]] = []
    baseline_path = out / f"baseline_{args.recon_task}.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else None
    for combo in args.combos.split(","):
        task, _, family = combo.partition(":")
        if task not in PAIRS:
            parser.error(f"unknown task {task!r} in --combos ({', '.join(PAIRS)})")
        if family not in installed:
            print(f"skipping {family}: not installed", flush=True)
            continue
        if task == "recon" and baseline is None:
            baseline = degraded_input_baseline(args)
            baseline_path.write_text(json.dumps(baseline))
        for seed in [int(s) for s in args.seeds.split(",")]:
            for arch in PAIRS[task]:
                name = f"{task}-{family}-{arch}-s{seed}"
                if args.table_only and not (out / "runs" / name / "summary.json").exists():
                    continue
                config = run_config(task, family, arch, seed, args)
                row = run_one(name, config, out, train=not args.table_only)
                rows.append({**row, "task": task, "family": family, "arch": arch, "seed": seed})
                (out / "results.json").write_text(json.dumps(rows, indent=1))
                (out / "table.md").write_text(table(rows, baseline) + "\n")
    print(table(rows, baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
