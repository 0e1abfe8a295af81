"""Do flemme's defaults lose to MONAI? The issue-15 protocol on MNI152 3D tissue, side by side.

    python benchmarks/bench_defaults.py                          # 180 s each, 2 threads
    python benchmarks/bench_defaults.py --budget steps=600       # equal steps (the second check)
    python benchmarks/bench_defaults.py --budget seconds=60 --threads 1 --rows monai,defaults

Rows, all on the same split (posterior half of MNI152 2 mm trains, anterior half held out), the
same data pipeline and the same held-out evaluation (``flemme eval``'s code: Gaussian sliding
window, overlap 0.25), one after another in this process with the same budget:

* ``monai``: the protocol's plain MONAI loop (``bench_trainer.plain_monai_loop``): MONAI's
  ``UNet`` 16-32-64-128, strides 2, 2 residual units (flemme-monai's ``monai-unet``, i.e.
  MONAI's own class), DiceCE, AdamW lr 1e-3 constant, 48³ patches, batch 2, random flips on
  every axis but left-right;
* ``defaults``: ``flemme train`` with nothing but ``--encoder cnn --arch unet`` on the same data
  section (flemme's model and training defaults: what most users run);
* ``demo``: the ``flemme demo`` config (its own data section), with the same budget.

With ``--budget seconds=S`` each row trains for S seconds of step time (``train.max_seconds``
for flemme); steps then differ, and s/step is reported. The machine's load (``uptime``) is
printed before and after: on a shared machine only rows measured in the same run compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trainer import _median, plain_monai_loop

#: the protocol's data section (issue 15): 48³ patches centred on tissue or background 1:1,
#: batch 2, random flips on the A-P and S-I axes (array axes 1, 2; axis 0 is left-right).
PROTOCOL_DATA = {"preset": "mni152-tissue-3d", "options": {"resolution": 2}, "patch_size": [48, 48, 48],
                 "batch_size": 2, "transforms": {"crop": "label", "flip": {"prob": 0.5, "axes": [1, 2]}}}
EVAL = {"sw_batch_size": 2, "overlap": 0.25, "val_every": 0}
ROWS = ("monai", "defaults", "demo")
LABELS = {"monai": "MONAI UNet, plain loop (protocol)", "defaults": "flemme cnn+unet defaults",
          "demo": "flemme demo config"}


def _uptime() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def _evaluate(checkpoint: Path) -> dict:
    from flemme_core.training.inference import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, variants=False)["metrics"]


def run_monai(budget: dict, seed: int, out: Path) -> dict:
    import torch

    from flemme_core import build_model, save_model
    from flemme_core.data import build_datasets
    from flemme_core.training.config import run_config_from_dict
    from flemme_core.training.setup import complete_model_config

    run = run_config_from_dict({"model": {"arch": "monai-unet"}, "data": copy.deepcopy(PROTOCOL_DATA),
                                "train": {"lr": 1e-3, "seed": seed, **EVAL}})
    torch.manual_seed(seed)
    _, _, info = build_datasets(run.data, seed=seed)
    model = build_model(complete_model_config(run.model, info))
    times = plain_monai_loop(run, model, steps=budget.get("steps"), max_seconds=budget.get("seconds"),
                             schedule="constant")
    path = out / "monai" / "last.safetensors"
    save_model(model.eval(), path, extra={"data": run.data, "seed": seed,
                                          "sw": {"sw_batch_size": EVAL["sw_batch_size"], "overlap": EVAL["overlap"]}})
    return {"model": model, "steps": len(times), "seconds": sum(times), "s_per_step": _median(times[1:] or times),
            "metrics": _evaluate(path)}


def run_flemme(row: str, budget: dict, seed: int, out: Path, threads: int, sets: list[str] = ()) -> dict:
    from flemme_core.checkpoint import load_model
    from flemme_core.training import Trainer
    from flemme_core.training.config import run_config_from_dict
    from flemme_core.training.demo import DEMO

    if row == "demo":
        cfg = copy.deepcopy(DEMO)
    else:
        cfg = {"model": {"arch": "unet", "encoder": {"name": "cnn"}}, "data": copy.deepcopy(PROTOCOL_DATA), "train": {}}
    for item in sets:  # investigations: --set model.encoder.block=res_conv changes the flemme rows
        from flemme_core.config import set_dotted
        from flemme_core.training.config import parse_set_value

        key, _, value = item.partition("=")
        set_dotted(cfg, key.strip(), parse_set_value(value))
    train = cfg["train"]
    train.update(seed=seed, threads=threads, progress=False, output=str(out / row), **EVAL)
    if "seconds" in budget:
        train["max_seconds"] = budget["seconds"]
        train.setdefault("steps", 100_000)  # the time ends the run; the schedule follows elapsed time
        train["steps"] = max(train["steps"], 100_000)
    else:
        train["steps"] = budget["steps"]
    trainer = Trainer(run_config_from_dict(cfg, name=row), overwrite=True, quiet=True)
    summary = trainer.fit()  # ends with the held-out evaluation (the code `flemme eval` runs)
    times = trainer.step_seconds
    return {"model": load_model(out / row / "last.safetensors"), "steps": trainer.steps_trained,
            "seconds": trainer.train_seconds, "s_per_step": _median(times[1:] or times), "metrics": summary["final"]}


def _cost(model) -> tuple[int, float]:
    import torch

    from flemme_core.build import count_parameters, macs_per_sample

    x = torch.randn(1, model.config.in_channels, *model.config.image_size)
    return count_parameters(model)[0], macs_per_sample(model, x) / 1e9


def table(results: dict[str, dict], budget: dict) -> str:
    classes = ("CSF", "GM", "WM")
    head = ["row", "params", "GMACs/sample", "steps", "train s", "s/step", *[f"Dice {c}" for c in classes],
            "mean Dice", "s/step ratio", "Dice − MONAI"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = results.get("monai")
    for row, r in results.items():
        m = r["metrics"]
        ratio = f"{r['s_per_step'] / ref['s_per_step']:.2f}" if ref else "-"
        diff = f"{m['dice'] - ref['metrics']['dice']:+.3f}" if ref else "-"
        lines.append("| " + " | ".join([
            LABELS[row], f"{r['params']:,}", f"{r['gmacs']:.2f}", str(r["steps"]), f"{r['seconds']:.0f}",
            f"{r['s_per_step']:.3f}", *[f"{m.get(f'dice/{c}', float('nan')):.3f}" for c in classes],
            f"{m['dice']:.3f}", ratio, diff]) + " |")
    what = f"{budget['seconds']:.0f} s of training steps each" if "seconds" in budget else f"{budget['steps']} steps each"
    return f"MNI152 2 mm tissue, anterior half held out; {what}\n\n" + "\n".join(lines)


def parse_budget(text: str) -> dict:
    key, _, value = text.partition("=")
    if key not in ("steps", "seconds") or not value:
        raise SystemExit(f"--budget must be steps=N or seconds=S, got {text!r}")
    number = float(value)
    if number <= 0:
        raise SystemExit(f"--budget {key} must be positive, got {value}")
    return {key: int(number) if key == "steps" else number}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="seconds=180", help="steps=N or seconds=S per row (default seconds=180)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="change the flemme rows, e.g. --set model.encoder.block=res_conv (repeatable)")
    args = parser.parse_args()
    budget = parse_budget(args.budget)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="flemme-bench-defaults-"))
    print(f"start {time.strftime('%H:%M:%S')}, {_uptime()}, {args.threads} thread(s), budget {budget}"
          + (f", flemme rows changed by {args.sets}" if args.sets else ""), flush=True)
    results: dict[str, dict] = {}
    for row in rows:
        tick = time.perf_counter()
        r = (run_monai(budget, args.seed, out) if row == "monai"
             else run_flemme(row, budget, args.seed, out, args.threads, args.sets))
        r["params"], r["gmacs"] = _cost(r.pop("model"))
        r["wall_s"] = time.perf_counter() - tick
        results[row] = r
        print(f"{row}: {r['steps']} steps, {r['s_per_step']:.3f} s/step, mean Dice {r['metrics']['dice']:.3f} "
              f"({r['wall_s']:.0f} s with evaluation); {_uptime()}", flush=True)
    print()
    print(table(results, budget))
    print(f"\nend {time.strftime('%H:%M:%S')}, {_uptime()}; runs in {out}")
    if args.json:
        Path(args.json).write_text(json.dumps({"budget": budget, "threads": args.threads, "rows": results},
                                              indent=2, default=float))


if __name__ == "__main__":
    main()
