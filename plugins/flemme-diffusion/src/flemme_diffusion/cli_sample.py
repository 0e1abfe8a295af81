"""``flemme sample``: draw samples from a generative checkpoint.

The command knows no architecture: it loads the checkpoint, asks the model for
``model.sample(n, sampler=..., steps=..., seed=..., condition=..., guidance=..., progress=...)``
(a method the generative architectures provide) and writes a PNG grid and the arrays
(``.npy`` or one NIfTI per sample) plus a JSON record, each file atomically. Every
check runs before anything is written, so a mistake leaves the output folder untouched.
Import-cheap: click only at the top; torch and numpy load inside the command.
"""

from __future__ import annotations

import click


def _parse_condition(value: str | None):
    """A class index (``3``), a ``.npy`` array, or an image file read like ``flemme predict`` does."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    from pathlib import Path

    import numpy as np

    from flemme_core.errors import ShapeError

    path = Path(value)
    if path.suffix == ".npy":
        if not path.is_file():
            raise ShapeError(f"condition file {value!r} does not exist; give a class index or an image file")
        try:
            return np.load(path, allow_pickle=False).astype("float32")
        except ValueError as exc:
            raise ShapeError(f"condition file {value!r} is not a plain numeric .npy array ({exc})") from None
    from flemme_core.data.io import read_image

    return read_image(path).array


def _grid_png(samples, path, data_range: tuple[float, float] | None, title: str = "", seed: int = 0) -> None:
    """A labelled grid of the samples (2D: channel 0; 3D: the middle slice of the last axis), each
    tile at least 1.6 inches wide and named by its index and seed, one grey scale for all (shown)."""
    import math

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    from flemme_core.checkpoint import atomic_write

    arr = samples[:, 0]
    if arr.ndim == 4:
        arr = arr[..., arr.shape[-1] // 2]
    lo, hi = data_range if data_range else (float(np.percentile(arr, 0.5)), float(np.percentile(arr, 99.5)))
    n, h, w = arr.shape
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    tile = max(1.6, min(3.0, 12.0 / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile, rows * tile * h / max(w, 1) + 0.7), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(arr[i].T, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
            ax.set_title(f"#{i} (seed {seed + i})", fontsize=9)
    scale = f"grey scale {lo:.3g}..{hi:.3g}" + (" (model range)" if data_range else " (0.5-99.5th percentiles)")
    fig.suptitle(f"{title}\n{scale}" if title else scale, fontsize=10)
    fig.tight_layout()

    def save(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=100)

    try:
        atomic_write(path, save)
    finally:
        plt.close(fig)


def _write_arrays(samples, out, fmt: str, stem: str = "sample") -> list[str]:
    """``<stem>s.npy`` holding all arrays, or one ``<stem>_###.nii.gz`` per array (channels last)."""
    import numpy as np

    from flemme_core.checkpoint import atomic_write

    if fmt == "npy":
        def save(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, samples)

        atomic_write(out / f"{stem}s.npy", save)
        return [f"{stem}s.npy"]
    import nibabel as nib

    names = []
    for i, s in enumerate(samples):
        data = s[0] if s.shape[0] == 1 else np.moveaxis(s, 0, -1)  # NIfTI: channels last
        name = f"{stem}_{i:03d}.nii.gz"
        img = nib.Nifti1Image(data.astype(np.float32), np.eye(4))
        atomic_write(out / name, lambda tmp, img=img: _save_nifti(img, tmp))
        names.append(name)
    return names


def _save_nifti(img, tmp: str) -> None:
    """nibabel picks compression from the suffix: write tmp.nii.gz, then move it onto tmp."""
    import os

    import nibabel as nib

    nib.save(img, tmp + ".nii.gz")
    os.replace(tmp + ".nii.gz", tmp)


@click.command("sample")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-n", "--num", "n", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--sampler", type=click.Choice(["ddpm", "ddim", "edm"]), default=None,
              help="Sampler (default: the model's own; vae: none).")
@click.option("--steps", type=int, default=None, help="Denoising steps (default: the model's sample_steps).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i starts from seed + i.")
@click.option("--condition", default=None,
              help="Class index (class-conditional models) or an image file / .npy (sdm: also writes the "
                   "ensemble mean and standard deviation of the N samples).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale.")
@click.option("--format", "fmt", type=click.Choice(["npy", "nifti"]), default="npy", show_default=True,
              help="How to write the arrays.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (grid.png, samples.npy or sample_*.nii.gz, samples.json).")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar over the steps.")
@click.pass_context
def sample(ctx: click.Context, checkpoint: str, n: int, sampler: str | None, steps: int | None, seed: int,
           condition: str | None, guidance: float | None, fmt: str, out_dir: str, threads: int | None,
           progress: bool) -> None:
    """Draw N samples from a generative CHECKPOINT (vae, ddpm, edm, ldm, sdm) into a folder."""
    from flemme_core.errors import FlemmeError

    try:
        _run(checkpoint, n, sampler, steps, seed, condition, guidance, fmt, out_dir, threads, progress)
    except FlemmeError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(exc.exit_code)


def _run(checkpoint: str, n: int, sampler: str | None, steps: int | None, seed: int, condition: str | None,
         guidance: float | None, fmt: str, out_dir: str, threads: int | None, progress: bool) -> None:
    import json
    import sys
    import time
    from pathlib import Path

    from flemme_core.errors import ConfigError

    if n < 1:
        raise ConfigError(f"-n must be at least 1, got {n}")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    import torch

    from flemme_core.checkpoint import atomic_write, load_model

    if threads:
        torch.set_num_threads(threads)
    model = load_model(checkpoint)
    if not callable(getattr(model, "sample", None)):
        raise ConfigError(f"{checkpoint!r} is not a generative checkpoint (architecture {model.config.arch!r} "
                          f"cannot sample); use a vae, ddpm, edm, ldm or sdm checkpoint")
    cond = _parse_condition(condition)
    model.eval()
    start = time.perf_counter()
    bar = progress and sys.stderr.isatty()  # a bar on a terminal; plain lines in a log (no \r fragments)
    if progress and not bar:
        click.echo(f"sampling {n} x {list(model.config.image_size)} with {model.config.arch} ...", err=True)
    samples = model.sample(n, sampler=sampler, steps=steps, seed=seed, condition=cond, guidance=guidance,
                           progress=bar)
    elapsed = time.perf_counter() - start
    array = samples.detach().cpu().float().numpy()
    out = Path(out_dir)
    opts = getattr(model, "options", None)
    data_range = tuple(float(v) for v in opts.input_range) if hasattr(opts, "input_range") else None
    names = _write_arrays(array, out, fmt)
    if cond is not None and not isinstance(cond, int) and n > 1:
        # Several samples for one input image (sdm): their mean and spread (an uncertainty map).
        names += _write_arrays(array.mean(axis=0, keepdims=True), out, fmt, "ensemble_mean")
        names += _write_arrays(array.std(axis=0, keepdims=True), out, fmt, "ensemble_std")
    _grid_png(array, out / "grid.png", data_range, seed=seed,
              title=f"{model.config.arch}: {n} samples, sampler {sampler or 'default'}, steps {steps or 'default'}")
    record = {"checkpoint": str(checkpoint), "arch": model.config.arch, "n": n, "sampler": sampler,
              "steps": steps, "seed": seed, "condition": condition, "guidance": guidance,
              "shape": list(array.shape), "seconds": round(elapsed, 3), "files": names + ["grid.png"]}
    atomic_write(out / "samples.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    click.echo(f"wrote {n} samples {list(array.shape[1:])} to {out}/ ({', '.join(record['files'])}) "
               f"in {elapsed:.1f} s")
