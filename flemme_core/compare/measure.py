"""Inside one cell's process: train with the trainer of ``flemme train``, then measure.

``python -m flemme_core.compare.measure CELL_DIR`` reads ``CELL_DIR/cell.yaml`` (written by
the study process, which holds the cell's run-folder lock and passes it on through
``FLEMME_RUN_LOCK_HELD``), trains or resumes the run in that folder, and writes
``result.json`` atomically: the held-out metrics overall and per item (for the paired
comparison), the parameters, MACs per sample, training seconds per step, inference
milliseconds per image at one thread and the process's peak memory. One process per cell
keeps the peak memory and timings of one cell apart from the others'.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CELL_SPEC = "cell.yaml"
RESULT = "result.json"
SUMMARY = "summary.json"


def _finished(cell_dir: Path) -> dict[str, Any] | None:
    """The trainer's summary of a run that completed (so resuming it would not re-measure time)."""
    state, summary = cell_dir / "state.json", cell_dir / SUMMARY
    if not (state.exists() and summary.exists()):
        return None
    if not json.loads(state.read_text()).get("finished"):
        return None
    return json.loads(summary.read_text())


def train_cell(cell_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    from ..training import train
    from ..training.config import run_config_from_dict
    from ..training.runfolder import run_file_names

    done = _finished(cell_dir)
    if done is not None:
        return done
    run = run_config_from_dict(_resolved(cell_dir, spec), name=cell_dir.name)
    run.train.output = str(cell_dir)
    return train(run, resume=bool(run_file_names(cell_dir)), quiet=True)


def _resolved(cell_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The cell's config with its references to other cells (:mod:`.depends`) made paths."""
    from .depends import resolve

    needs = spec["cell"].get("needs") or {}
    if not needs:
        return spec["run"]
    study_dir = cell_dir.parents[len(Path(spec["cell"]["path"]).parts) - 1]
    return resolve(spec["run"], {row: study_dir / path for row, path in needs.items()})


def macs_per_sample(model: Any, example: Any) -> int:
    """Multiply-accumulates of one forward pass on one patch, as ``torch.utils.flop_counter``
    counts them (convolutions, matrix products, attention; custom kernels are not seen)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.predict(example)
    return int(counter.get_total_flops() // 2)


def inference_ms(model: Any, image: Any, settings: Any, repeats: int = 3, enough_seconds: float = 10.0) -> float:
    """Median wall time of whole-image inference (sliding window beyond the patch) at 1 thread:
    a warm-up, then up to ``repeats`` timed runs, fewer once they add up to ``enough_seconds``
    (a whole 3D volume through a slow network takes tens of seconds a run: four of them cost a
    cell minutes and tell little more than one)."""
    import torch

    from ..training import evaluation

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluation.infer(model, image, settings)  # warm-up
        times: list[float] = []
        while len(times) < repeats and sum(times) < 1000 * enough_seconds:
            start = time.perf_counter()
            evaluation.infer(model, image, settings)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def measure(cell_dir: Path, spec: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ..data import build_datasets
    from ..training.evaluation import EvalSettings
    from ..training.inference import evaluate_checkpoint
    from ..training.profiling import count_parameters
    from ..training.sampling import collate

    checkpoint = cell_dir / "last.safetensors"  # the final model: best.safetensors is chosen on held-out data
    variant = spec["cell"].get("variant")  # e.g. a distillation run's teacher
    ev = evaluate_checkpoint(checkpoint, per_item=True, variants=False, variant=variant,
                             device=spec["run"]["train"].get("device", "auto"))
    from ..checkpoint import load_model
    from ..training.inference import variant_of

    model = load_model(checkpoint, map_location="cpu").eval()
    extra = model.checkpoint_metadata.get("extra", {})
    model = variant_of(model, variant)
    cfg = model.config
    _, held_out, info = build_datasets({**extra["data"], "cache": False}, seed=int(extra.get("seed", 0)))
    x, _ = model.inputs_and_target(collate([held_out[0]]))
    sw = extra.get("sw", {})
    settings = EvalSettings(task=model.task, metrics=[], roi_size=list(extra.get("roi_size") or cfg.image_size),
                            sw_batch_size=int(sw.get("sw_batch_size", 4)), overlap=float(sw.get("overlap", 0.25)),
                            sw_mode=sw.get("mode", "gaussian"), num_classes=max(2, cfg.out_channels))
    patch = torch.zeros(1, cfg.in_channels, *cfg.image_size)
    return {**spec["cell"], "task": ev["task"], "held_out": ev["held_out"], "num_items": ev["num_items"],
            "metrics": ev["metrics"], "per_item": ev.get("per_item", []),
            "parameters": count_parameters(model), "macs": macs_per_sample(model, patch),
            "patch": list(cfg.image_size), "infer_ms": inference_ms(model, x, settings),
            "infer_input": list(x.shape[2:]),
            "train": {k: summary.get(k) for k in ("steps", "steps_trained", "train_seconds", "seconds_per_step",
                                                  "stopped_by", "max_seconds", "seconds")},
            "peak_memory_mb": summary.get("peak_memory_mb"), "classes": list(info.class_names)}


def main(argv: list[str] | None = None) -> int:
    import yaml

    from ..checkpoint import atomic_write
    from ..errors import FlemmeError
    from ..training.launcher import die_with_parent
    from .workers import pin_from_env

    die_with_parent()  # the study process holds this cell's lock: without it, the cell must not train on
    args = sys.argv[1:] if argv is None else argv
    cell_dir = Path(args[0]).resolve()
    cpus = pin_from_env()  # before torch starts its threads
    try:
        spec = yaml.safe_load((cell_dir / CELL_SPEC).read_text())
        summary = train_cell(cell_dir, spec)
        result = measure(cell_dir, spec, summary)
        if cpus is not None:
            result["cpus"] = cpus
    except FlemmeError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", 2)
    from ..training.logs import json_safe

    text = json.dumps(json_safe(result), indent=1, default=str)  # NaN (an absent class's Dice) -> null
    atomic_write(cell_dir / RESULT, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
