"""MMFD's goals measured on the shipped real data: branches, fused teacher, distilled student.

Per dataset and seed, every step is a plain ``flemme`` command (printed as it runs):

1. ``flemme train configs/branch-cnn.yaml`` and ``configs/branch-swin.yaml`` (the branches);
2. ``flemme train distill.yaml``: ``configs/distill-stardist.yaml`` with this seed's branch
   checkpoints, the teacher recipe (``--residual``: the fused encoder refines that branch,
   and the teacher's decoder and head start from its checkpoint; ``none``: the fusion and
   decoder learn from scratch on the anchor grid) and the stage lengths;
3. ``flemme eval <run>/best.safetensors --json`` for the branches and the distill checkpoint
   (teacher and student side by side).

Datasets: ``stardist`` (2-class nuclei, bottom-right quadrant held out) and ``tissue``
(MNI152 2 mm axial slices, background/CSF/GM/WM, anterior halves held out). Finished
steps are reused (their eval JSON exists), so an interrupted experiment continues.

    python plugins/flemme-mmfd/experiments/mmfd_experiment.py --dataset tissue --seeds 0,1
    python plugins/flemme-mmfd/experiments/mmfd_experiment.py --dataset tissue --table-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BRANCHES = ("cnn", "swin")
#: Per dataset: CLI overrides, the schedule it needs (MNI152 tissue needs more steps), the
#: branch the teacher refines (the stronger one) and the student: a small model of that
#: branch's family (None: the config's cnn student).
DATASETS: dict[str, dict[str, Any]] = {
    "stardist": {"preset": "stardist-nuclei-2d", "overrides": [], "steps": 200, "student_steps": 200, "val_every": 100, "residual": "cnn",
                 "student": None},
    "tissue": {"preset": "mni152-tissue-2d", "overrides": ["--data", "mni152-tissue-2d", "--set", "model.out_channels=4",
                             "--set", "model.image_size=[48,48]", "--set", "data.patch_size=[48,48]"],
               "steps": 1000, "student_steps": 2000, "val_every": 250, "residual": "swin",
               "student": {"name": "swin", "channels": [16, 32, 64, 128], "num_blocks": [1, 1, 1, 1]}},
}


def flemme(*args: str, threads: int) -> None:
    print("$ flemme", " ".join(args), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "flemme_core", *args], check=True, env=env)


def distill_config(branch_dirs: dict[str, Path], args: argparse.Namespace, spec: dict[str, Any]) -> str:
    """The demo distill config with this seed's branches, the teacher recipe, student and stage lengths."""
    import yaml

    config = yaml.safe_load((CONFIGS / "distill-stardist.yaml").read_text())
    if spec["student"] is not None:
        config["model"]["encoder"] = dict(spec["student"])
    opts = config["model"]["arch_options"]
    teacher = opts["teacher"]
    for branch in teacher["branches"]:
        branch["checkpoint"] = str(branch_dirs[branch["id"]] / "best.safetensors")
    for key in ("residual", "anchor", "channels"):
        teacher.pop(key, None)
    opts.pop("teacher_init", None)
    if args.residual != "none":
        teacher["residual"] = opts["teacher_init"] = args.residual
    if args.control:  # the same teacher stage with the residual branch alone: what fusion adds over fine-tuning
        teacher["branches"] = [b for b in teacher["branches"] if b["id"] == args.residual]
        opts["stages"] = ["teacher"]
    else:  # the earlier recipe: fusion and decoder from scratch on the swin grid, fixed widths
        teacher.update(anchor="swin", channels=[32, 64, 128, 256])
    stages = config["train"]["stages"]
    config["train"]["val_every"] = spec["val_every"]
    stages["teacher"]["steps"] = args.teacher_steps or args.steps or spec["steps"]
    stages["student"]["steps"] = args.student_steps or args.steps or spec["student_steps"]
    if args.teacher_lr:
        stages["teacher"]["lr"] = args.teacher_lr
    elif args.residual == "none":  # the from-scratch recipe trained its teacher at the global lr
        stages["teacher"].pop("lr", None)
    if args.control:
        del stages["student"]
    return yaml.safe_dump(config, sort_keys=False)


def ensemble_gain(branch_dirs: dict[str, Path], preset: str) -> float:
    """Foreground Dice of the branches' averaged softmax minus the best branch's (``held_out_dice``,
    the distill report's measure): whether the branches hold complementary knowledge at all,
    which bounds what fusing them can add."""
    import torch
    from flemme_mmfd.report import held_out_dice

    from flemme_core import load_model
    from flemme_core.data import load_preset

    class Ensemble(torch.nn.Module):
        def __init__(self, models: list[torch.nn.Module]):
            super().__init__()
            self.models = torch.nn.ModuleList(models)

        def predict(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([m.predict(x).softmax(1) for m in self.models]).mean(0)

    torch.set_num_threads(1)
    splits = load_preset(preset)
    models = [load_model(d / "best.safetensors").eval() for d in branch_dirs.values()]
    roi = list(models[0].config.image_size)
    dice = lambda m: held_out_dice(m, splits.held_out, roi, splits.num_classes)
    return dice(Ensemble(models)) - max(dice(m) for m in models)


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    spec = DATASETS[args.dataset]
    steps = args.steps or spec["steps"]
    common = [*spec["overrides"], "--set", f"train.threads={args.threads}", "--seed", str(seed), "-q", "--overwrite"]
    root = out / f"{args.dataset}-s{seed}"
    dirs = {b: root / f"branch-{b}" for b in BRANCHES}
    row: dict[str, Any] = {"seed": seed}
    for b, run in dirs.items():
        result = run.with_suffix(".eval.json")
        if not result.exists() and not args.table_only:
            flemme("train", str(CONFIGS / f"branch-{b}.yaml"), *common, "--steps", str(steps),
                   "--val-every", str(spec["val_every"]), "-o", str(run), threads=args.threads)
            flemme("eval", str(run / "best.safetensors"), "--json", str(result), threads=args.threads)
        row[b] = json.loads(result.read_text())["metrics"]["dice"] if result.exists() else None
    gain = root / "ensemble-gain.json"
    if not gain.exists() and not args.table_only and all(row[b] is not None for b in BRANCHES):
        gain.write_text(json.dumps(ensemble_gain(dirs, spec["preset"])))
    row["ensemble"] = json.loads(gain.read_text()) if gain.exists() else None
    run = root / f"distill-{args.tag}"
    result = run.with_suffix(".eval.json")
    if not result.exists() and not args.table_only:
        run.parent.mkdir(parents=True, exist_ok=True)
        cfg = run.with_suffix(".yaml")
        cfg.write_text(distill_config(dirs, args, spec))
        flemme("train", str(cfg), *common, "-o", str(run), threads=args.threads)
        # A control run ends with its teacher stage, whose best.safetensors would be chosen on the
        # held-out validations; the full recipe's teacher is its stage's last state: evaluate that.
        checkpoint = "last.safetensors" if args.control else "best.safetensors"
        flemme("eval", str(run / checkpoint), "--json", str(result), threads=args.threads)
    if result.exists():
        variants = json.loads(result.read_text())["variants"]
        for side in ("teacher",) if args.control else ("teacher", "student"):
            row[side] = variants[side]["metrics"]["dice"]
            row[f"{side}_parameters"] = variants[side]["parameters"]
            row[f"{side}_ms"] = variants[side]["cpu_ms"]
    return row


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: Dice per seed, differences in points, size and speed ratios, the goals' verdicts."""
    lines = [("| seed | branch cnn | branch swin | teacher | student | teacher − best branch | student − teacher "
              "| parameters teacher/student | CPU ms teacher/student | branch ensemble − best branch (fg Dice) |"),
             "|---|" + "---:|" * 9]
    done = [r for r in rows if r.get("teacher") is not None]
    for r in done:
        best = max(r["cnn"], r["swin"])
        ensemble = "—" if r.get("ensemble") is None else f"{100 * r['ensemble']:+.2f}"
        cells = ([f"{r['student']:.4f}", f"{100 * (r['student'] - r['teacher']):+.2f}",
                  f"{r['teacher_parameters'] / r['student_parameters']:.1f}×",
                  f"{r['teacher_ms']:.1f} / {r['student_ms']:.1f}"] if "student" in r else
                 ["—", "—", "—", f"{r['teacher_ms']:.1f} / —"])
        lines.append(f"| {r['seed']} | {r['cnn']:.4f} | {r['swin']:.4f} | {r['teacher']:.4f} | {cells[0]} | "
                     f"{100 * (r['teacher'] - best):+.2f} | {' | '.join(cells[1:])} | {ensemble} |")
    if not done:
        return "\n".join(lines)
    teacher_ok = sum(r["teacher"] >= max(r["cnn"], r["swin"]) for r in done)
    control = any("student" not in r for r in done)
    students = "—" if control else _mean_std([r["student"] for r in done])
    lines.append(f"| mean ± std | {_mean_std([r['cnn'] for r in done])} | {_mean_std([r['swin'] for r in done])} | "
                 f"{_mean_std([r['teacher'] for r in done])} | {students} | | | | | |")
    if control:
        return "\n".join([*lines, "", f"Teacher ≥ best branch in {teacher_ok} of {len(done)} seed(s)."])
    student_ok = sum(r["student"] >= r["teacher"] - 0.01 for r in done)
    size_ok = sum(r["student_parameters"] * 10 <= r["teacher_parameters"] for r in done)
    lines += ["", (f"Goals over {len(done)} seed(s): teacher ≥ best branch in {teacher_ok}; student within 1 point "
              f"of the teacher in {student_ok}; student ≤ 1/10 of the parameters in {size_ok}.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="stardist")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/mmfd-experiment")
    parser.add_argument("--residual", default=None,
                        help="branch the teacher refines (default: cnn on stardist, swin on tissue); none: the "
                             "from-scratch fusion and decoder")
    parser.add_argument("--steps", type=int, default=0, help="branch and stage steps (default: per dataset)")
    parser.add_argument("--teacher-steps", type=int, default=0)
    parser.add_argument("--student-steps", type=int, default=0)
    parser.add_argument("--teacher-lr", type=float, default=0.0, help="teacher-stage lr (default: the config's)")
    parser.add_argument("--tag", default=None, help="name of this recipe's distill runs (default: from the options)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--control", action="store_true",
                        help="teacher stage only, with the residual branch alone (no fusion partner)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    args.residual = args.residual or DATASETS[args.dataset]["residual"]
    if args.residual not in (*BRANCHES, "none"):
        parser.error(f"--residual must be one of {', '.join(BRANCHES)} or none, got {args.residual!r}")
    if args.control and args.residual == "none":
        parser.error("--control needs a residual branch (it keeps that branch alone)")
    args.tag = args.tag or "-".join(
        [f"{'control' if args.control else 'res'}-{args.residual}"] + [f"{k}{v}" for k, v in (("t", args.teacher_steps), ("s", args.student_steps),
                                                           ("lr", args.teacher_lr)) if v])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds.split(","):  # the table is rewritten after each seed
        rows.append(run_seed(int(seed), args, out))
        text = table(rows)
        (out / f"{args.dataset}-{args.tag}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
