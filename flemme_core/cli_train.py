"""``flemme train``, ``flemme eval``, ``flemme predict`` and ``flemme demo``.

Import-cheap: only click at module level (``flemme --help`` stays fast); torch, MONAI
and the training package are imported inside the commands. User mistakes raise
:class:`~flemme_core.errors.FlemmeError`, which the ``flemme`` group prints as one
``Error:`` line with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from .cli_options import data_option, output_option, quiet_option, yaml_file_argument


def data_source(value: str) -> dict[str, Any]:
    """``--data``: a preset, a datalist JSON, IMAGES_DIR:LABELS_DIR or a Decathlon/nnU-Net folder
    (:func:`flemme_core.data.sources.data_argument`)."""
    from .data.sources import data_argument
    from .registry import get_registry

    return data_argument(value, sorted(get_registry().components("dataset")))


def _overrides(flags: dict[str, Any]) -> dict[str, Any]:
    mapping = {"encoder": "model.encoder.name", "arch": "model.arch", "steps": "train.steps",
               "output": "train.output", "batch_size": "data.batch_size", "lr": "train.lr", "seed": "train.seed",
               "val_every": "train.val_every", "device": "train.device", "amp": "train.amp"}
    return {mapping[k]: v for k, v in flags.items() if k in mapping and v is not None}


def _run_config(config_path: str | None, data: str | None, sets: tuple[str, ...], flags: dict[str, Any]):
    from .errors import ConfigError
    from .overrides import parse_set
    from .training.config import load_run_config

    run = load_run_config(config_path, _overrides(flags), sets, data_source=data_source(data) if data else None)
    if data and config_path is None:
        run.name = data.rsplit("/", 1)[-1].removesuffix(".json")
    model_keys = ("encoder", "arch", "model.encoder", "model.arch")
    if config_path is None or flags.get("encoder") or flags.get("arch") or \
            any(parse_set(item)[0].startswith(model_keys) for item in sets):
        run.name = default_run_name(run.name, run.model)
    if not run.data:
        raise ConfigError("no data: give a config file with a data: section, or --data PRESET "
                          "(see `flemme list datasets`)")
    if int(os.environ.get("RANK", "0")) == 0:
        for note in run.notes:
            click.echo(f"note: {note}", err=True)
    return run


def default_run_name(base: str, model: dict[str, Any]) -> str:
    """``<config or data>-<arch>-<encoder>``: runs of different models on the same data never
    share a default folder (a config file's own name is kept when the command line does not
    change its model)."""
    from .build import default_encoder_name
    from .registry import get_registry

    arch = model.get("arch") or "unet"
    encoder = model.get("encoder")
    name = encoder.get("name") if isinstance(encoder, dict) else encoder
    takes_encoder = get_registry().get("architecture", arch).metadata.get("encoder", True) is not False
    if name is None and takes_encoder:
        name = default_encoder_name(announce=False)
    return "-".join(str(p) for p in (base, arch, name if takes_encoder else None) if p)


def _launch_args(config_path: str | None, data: str | None, sets: tuple[str, ...], flags: dict[str, Any],
                 resume: bool, overwrite: bool, quiet: bool) -> list[str]:
    args = ["train"] + ([config_path] if config_path else [])
    if data:
        args += ["--data", data]
    for key, value in flags.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    for item in sets:
        args += ["--set", item]
    args += ["--resume"] * resume + ["--overwrite"] * overwrite + ["--quiet"] * quiet
    return args


def timing_line(summary: dict[str, Any]) -> str:
    """What each time figure includes (they do not divide into each other)."""
    per_step = summary.get("seconds_per_step")
    step = f"; one training step {per_step:.3f} s (median: data + forward + backward + update)" if per_step else ""
    return (f"trained  {summary.get('steps_trained', summary['steps'])} steps: {summary['seconds']:.0f} s for the "
            f"loop (steps + validation + checkpoints){step}; {summary.get('wall_seconds', summary['seconds']):.0f} s "
            "wall in all")


def _print_metrics(metrics: dict[str, float], header: str) -> None:
    click.echo(header)
    width = max((len(k) for k in metrics), default=0)
    for key, value in metrics.items():
        click.echo(f"  {key:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


def variants_table(variants: dict[str, dict[str, Any]], timing: dict[str, Any]) -> str:
    """Variants side by side, then each variant against the first (the reference)."""
    first = next(iter(variants.values()))
    keys = [k for k in first["metrics"] if "/" not in k][:4]  # summary metrics, not per class
    head = f"{'variant':<12}{'parameters':>13}{'CPU ms':>10}" + "".join(f"{k:>10}" for k in keys)
    size = "x".join(map(str, timing["input"][2:]))
    title = (f"variants (CPU ms per {size} forward, batch 1, {timing['threads']} thread(s), "
             f"median of {timing['repeats']}):")
    lines = [title, head]
    for name, row in variants.items():
        lines.append(f"{name:<12}{row['parameters']:>13,}{row['cpu_ms']:>10.1f}"
                     + "".join(f"{row['metrics'].get(k, float('nan')):>10.4f}" for k in keys))
    ref_name = next(iter(variants))
    for name, row in list(variants.items())[1:]:
        deltas = ", ".join(f"{k} {row['metrics'][k] - first['metrics'][k]:+.4f}" for k in keys
                           if k in row["metrics"] and k in first["metrics"])
        lines.append(f"{name} vs {ref_name}: parameters 1/{first['parameters'] / max(row['parameters'], 1):.1f}, "
                     f"{first['cpu_ms'] / max(row['cpu_ms'], 1e-9):.1f}x faster on CPU, {deltas}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
@click.command("train")
@yaml_file_argument("config_path")
@data_option("Dataset: a preset name (`flemme list datasets`), a datalist .json, or IMAGES:LABELS.")
@click.option("--encoder", help="Encoder family (overrides model.encoder.name).")
@click.option("--arch", help="Architecture (overrides model.arch).")
@click.option("--steps", type=int, help="Training steps (train.steps).")
@click.option("--batch-size", "batch_size", type=int, help="Global batch size (data.batch_size).")
@click.option("--lr", type=float, help="Learning rate (train.lr).")
@click.option("--seed", type=int, help="Seed (train.seed).")
@click.option("--val-every", "val_every", type=int, help="Validate every N steps (train.val_every).")
@click.option("--device", help="auto | cpu | cuda (train.device).")
@click.option("--amp", help="auto | none | bf16 | fp16 (train.amp).")
@output_option("Run folder (train.output; default runs/<config name>).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config key: train.lr=3e-4, data.patch_size=[64,64], encoder.block=res_conv (model.).")
@click.option("--resume", is_flag=True, help="Continue the run in the output folder from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in the output folder.")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Processes (DDP through torchrun; gloo on CPU, NCCL on CUDA).")
@quiet_option("No progress output; only the final summary.")
def train_command(config_path, data, sets, resume, overwrite, nproc, quiet, **flags) -> None:
    """Train a model from a YAML config (model:, data:, train:) and/or flags.

    \b
    flemme train examples/configs/mni152-tissue-3d.yaml
    flemme train --encoder cnn --arch unet --data synthetic-2d --steps 200
    flemme train examples/configs/synthetic-2d.yaml --nproc 2
    Writes last/best.safetensors, the training state, metrics.jsonl, curves.png and
    overlay.png into the run folder.
    """
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from .training.launcher import launch  # torch-free; owns torchrun's process group

        run = _run_config(config_path, data, sets, flags)  # fail here, once, on a bad config
        from .data import data_config_from_dict
        from .errors import ConfigError

        batch = data_config_from_dict(run.data).batch_size
        if batch % nproc:
            raise ConfigError(f"data.batch_size {batch} must be divisible by the {nproc} processes; "
                              f"use a multiple of {nproc}")
        from .training.runfolder import HELD_ENV, RunLock

        if resume and not run.output_dir.exists():
            raise ConfigError(f"--resume: the run folder {str(run.output_dir)!r} does not exist; check --output, "
                              "or start a new run without --resume")
        with RunLock(run.output_dir) as lock:  # held here for the workers' lifetime (they inherit it)
            os.environ[HELD_ENV] = lock.key
            try:
                code = launch(nproc, _launch_args(config_path, data, sets, flags, resume, overwrite, quiet))
            finally:
                os.environ.pop(HELD_ENV, None)
        sys.exit(code)
    from .training import train

    run = _run_config(config_path, data, sets, flags)
    from .training.stops import LAUNCHED_ENV, exit_code, resume_command, signal_name, stop_signals

    try:
        with stop_signals():  # SIGTERM like Ctrl-C: after the current checkpoint commit, with the resume hint
            summary = train(run, resume=resume, overwrite=overwrite, quiet=quiet)
    except KeyboardInterrupt as exc:
        if not os.environ.get(LAUNCHED_ENV):  # under --nproc the launching process says it, once
            click.echo(f"interrupted ({signal_name(exc)}); continue with: {resume_command()} "
                       f"(run folder {run.output_dir})", err=True)
        sys.exit(exit_code(exc))
    if int(os.environ.get("RANK", "0")) == 0:
        final = {k: v for k, v in summary["final"].items()}
        cut = " (train.max_seconds reached)" if summary.get("stopped_by") == "seconds" else ""
        _print_metrics(final, f"held-out metrics after {summary.get('steps_trained', summary['steps'])} steps{cut} "
                              f"({summary['held_out']}):")
        best = summary["best"]
        if best.get("score") is not None:
            click.echo(f"best {best['metric']} {best['score']:.4f} at step {best['step']}")
        click.echo(timing_line(summary))
        click.echo(f"run folder: {summary['run_dir']}")


@click.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", help="Evaluate on this dataset instead of the checkpoint's held-out split.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override data.* or train.* keys.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the metrics as JSON here.")
@click.option("--per-item", "per_item", is_flag=True, help="Include every item's metrics in the JSON.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--variants/--no-variants", default=True, show_default=True,
              help="Also evaluate the architecture's variants side by side (distillation: teacher vs student).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(0),
              help="CPU threads for the variants' timing (0: torch's default).")
def eval_command(checkpoint, data, sets, json_path, per_item, device, variants, threads) -> None:
    """Held-out metrics of a checkpoint: Dice per class, mIoU, HD95 (segmentation); PSNR,
    SSIM (reconstruction); or the architecture's own. Architectures with evaluation variants
    (distillation) also get a table of each variant's parameters, CPU time and metrics."""
    from .training.inference import evaluate_checkpoint

    if json_path:
        from .diskio import check_output_file

        check_output_file(json_path, "--json")  # before minutes of evaluation, not after printing the metrics
    result = evaluate_checkpoint(checkpoint, data=data_source(data) if data else None, sets=sets,
                                 device=device, per_item=per_item, variants=variants, threads=threads or None)
    _print_metrics(result["metrics"], f"{result['data']} ({result['held_out']}):")
    if result.get("variants"):
        click.echo(variants_table(result["variants"], result["timing"]))
    if json_path:
        from pathlib import Path

        from .checkpoint import atomic_write
        from .training.logs import json_safe

        text = json.dumps(json_safe(result), indent=1, default=str, allow_nan=False)
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
        click.echo(f"wrote {json_path}")


@click.command("predict")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True,
              help="Output file (one input: .nii.gz or .png) or folder (several inputs).")
@click.option("--normalize", default="auto", show_default=True,
              help="auto: exactly the preprocessing recorded in the checkpoint (the preset's constants, "
                   "data.transforms' orientation/spacing/normalisation) | zscore | percentile | none "
                   "(per image, replacing the recorded intensity step).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
def predict_command(checkpoint, inputs, output, normalize, device) -> None:
    """Predict whole images (sliding window); NIfTI keeps the input's affine, PNG/JPG give PNG.

    Segmentation writes class indices; reconstruction writes the output image.
    """
    from pathlib import Path

    from .diskio import check_output_file, check_output_folder
    from .training.inference import predict_files

    if len(inputs) == 1 and Path(output).suffix:  # checked before any model is loaded or image read
        check_output_file(output, "--output")
    else:
        check_output_folder(output, "--output folder")
    for src, dst in predict_files(checkpoint, list(inputs), output, normalize=normalize, device=device,
                                  log=lambda text: click.echo(text, err=True)):
        click.echo(f"{src} -> {dst}")


@click.command("demo")
@click.option("--synthetic", is_flag=True, help="Generated 2D images instead of MNI152 (needs no nilearn).")
@click.option("--steps", type=int, help="Training steps (default: MNI152 trains for 160 s, at most 1600 steps; 200 synthetic).")
@output_option("Run folder (default runs/<demo name>; a previous demo there is replaced).")
@click.option("--threads", type=int, help="torch threads (default: torch's choice).")
@quiet_option("No progress output.")
def demo_command(synthetic, steps, output, threads, quiet) -> None:
    """Train and evaluate a small model on real images (MNI152 brain tissue via nilearn).

    Trains on the posterior half of the brain, reports Dice on the held-out anterior
    half, and writes curves.png (loss and metrics) and overlay.png (prediction vs label
    on a held-out slice). A few minutes on a 2-core CPU.
    """
    from pathlib import Path

    from .training.demo import run_demo

    summary = run_demo(synthetic=synthetic, steps=steps, output=output, threads=threads, quiet=quiet)
    final = summary["final"]
    per_class = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in final.items() if k.startswith("dice/"))
    click.echo(f"data      {summary['data']}; held out: {summary['held_out']}")
    click.echo(f"held-out Dice {final.get('dice', float('nan')):.3f} ({per_class}); "
               f"mIoU {final.get('miou', float('nan')):.3f}; HD95 {final.get('hd95', float('nan')):.2f} "
               f"{summary.get('hd95_units', '')}".rstrip())
    click.echo(timing_line(summary))
    run_dir = Path(summary["run_dir"])
    for name in ("curves.png", "overlay.png", "best.safetensors", "metrics.jsonl"):
        click.echo(f"wrote     {run_dir / name}")
