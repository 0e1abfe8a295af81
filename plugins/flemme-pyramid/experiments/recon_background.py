"""Where the reconstruction SSIM of ``ae`` and ``hae`` is won or lost: background vs tissue.

Why: with each slice's own data range, SSIM in the flat, near-zero air around the head
(~25% of a Colin27 slice) punishes any residual texture or small offset far more than
PSNR does, so a model can match another's PSNR and lose SSIM there alone. This script
re-evaluates the finished cells of the ``pyramid-recon.yaml`` study (same held-out slices,
same sliding-window inference, same metric code) and splits the SSIM map into background
(target <= 2% of its range) and the rest; it also scores the outputs clipped to [0, 1],
the range the preset scales the clean images to (a known prior, applied to both models).

    flemme compare plugins/flemme-pyramid/experiments/pyramid-recon.yaml -o runs/pyramid-recon
    python plugins/flemme-pyramid/experiments/recon_background.py --out runs/pyramid-recon
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

PAIR = ("ae", "hae")


def evaluate_run(run_dir: Path) -> dict[str, float]:
    """Raw and clipped PSNR/SSIM, background/tissue SSIM and background residual of one run."""
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    from flemme_core.checkpoint import load_model
    from flemme_core.data import build_datasets
    from flemme_core.training.evaluation import EvalSettings, infer
    from flemme_core.training.metrics import ReconstructionMetrics

    model = load_model(run_dir / "last.safetensors").eval()
    data = {**model.checkpoint_metadata["extra"]["data"], "cache": False}
    _, held_out, _ = build_datasets(data, seed=0)
    settings = EvalSettings(task="reconstruction", metrics=["psnr", "ssim"], roi_size=list(model.config.image_size))
    raw, clipped = ReconstructionMetrics(2, ["psnr", "ssim"]), ReconstructionMetrics(2, ["psnr", "ssim"])
    bg_ssim, fg_ssim, bg_std = [], [], []
    for i in range(len(held_out)):
        item = held_out[i]
        x, y = torch.as_tensor(item["image"])[None], torch.as_tensor(item["label"])[None]
        pred = infer(model, x, settings)
        raw.update(pred, y)
        clipped.update(pred.clamp(0.0, 1.0), y)
        rng = float(y.max() - y.min())
        background = y <= y.min() + 0.02 * rng
        bg_std.append(float(pred[background].std()) / rng)
        ssim_map, _ = compute_ssim_and_cs(pred, y, spatial_dims=2, data_range=rng, kernel_type="gaussian",
                                          kernel_size=[11, 11], kernel_sigma=[1.5, 1.5])
        h, w = ssim_map.shape[2:]
        top, left = (y.shape[2] - h) // 2, (y.shape[3] - w) // 2
        bg = background[..., top:top + h, left:left + w]
        bg_ssim.append(float(ssim_map[bg].mean()))
        fg_ssim.append(float(ssim_map[~bg].mean()))
    r, c = raw.result(), clipped.result()
    return {"psnr": r["psnr"], "ssim": r["ssim"], "ssim_bg": statistics.fmean(bg_ssim),
            "ssim_tissue": statistics.fmean(fg_ssim), "bg_std": statistics.fmean(bg_std),
            "psnr_clip": c["psnr"], "ssim_clip": c["ssim"]}


def _ms(values: list[float], sign: str = "") -> str:
    from flemme_core.compare.stats import mean_std

    mean, sd, _ = mean_std(values)
    return f"{mean:{sign}.4f} ± {sd:.4f}"


def table(rows: dict[tuple[str, str, int], dict[str, float]]) -> str:
    """Markdown: per family and arch, mean ± std over seeds; then the paired hae − ae deltas."""
    keys = ["ssim", "ssim_bg", "ssim_tissue", "bg_std", "psnr_clip", "ssim_clip"]
    lines = [("| encoder | arch | seeds | ssim | ssim background | ssim tissue | background residual std | "
             "psnr clipped [0,1] | ssim clipped [0,1] |"), "|---" * 9 + "|"]
    for family in sorted({f for f, _, _ in rows}):
        for arch in PAIR:
            seeds = sorted(s for f, a, s in rows if f == family and a == arch)
            if seeds:
                cells = [_ms([rows[(family, arch, s)][k] for s in seeds]) for k in keys]
                lines.append(f"| {family} | {arch} | {len(seeds)} | " + " | ".join(cells) + " |")
        paired = sorted({s for f, a, s in rows if f == family and a == PAIR[0]}
                        & {s for f, a, s in rows if f == family and a == PAIR[1]})
        if paired:
            cells = []
            for k in keys:
                d = [rows[(family, PAIR[1], s)][k] - rows[(family, PAIR[0], s)][k] for s in paired]
                cells.append(f"Δ {_ms(d, '+')} ({sum(v > 0 for v in d)}/{len(d)} higher)")
            lines.append(f"| {family} | **hae − ae** | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/pyramid-recon", help="the pyramid-recon study's folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for run in sorted(Path(args.out).glob("cells/*/*/seed*")):  # cells/<family>+<arch>/<dataset>/seed<k>
        family, _, arch = run.parents[1].name.partition("+")
        key = (family, arch, int(run.name.removeprefix("seed")))
        if arch in PAIR and (run / "result.json").exists():
            rows[key] = evaluate_run(run)
            print(run.relative_to(args.out), {k: round(v, 4) for k, v in rows[key].items() if math.isfinite(v)},
                  flush=True)
    text = table(rows)
    (Path(args.out) / "recon_background.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
