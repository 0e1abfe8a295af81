"""``flemme convert IN -o OUT.safetensors``: a published ``.pth``/``.bin`` read once, safely.

Foundation checkpoints (SAM/MedSAM, PiDiNet, timm's older files) are published as pickles.
flemme opens them only with ``torch.load(weights_only=True)`` (tensors and plain containers,
no code) and refuses, in one line, a file that needs full unpickling. The state dict is
found under the usual nesting (``state_dict``, ``model``, ...) and written as safetensors,
atomically, so every later load reads safetensors. Import-cheap: click only at the top.
"""

from __future__ import annotations

import click


@click.command("convert")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="the .safetensors file to write (atomically)")
@click.option("--prefix", default=None, help="keep only keys under this prefix (kept in the names), "
                                             "e.g. image_encoder. for SAM's encoder alone")
@click.option("--force", is_flag=True, help="replace OUTPUT if it exists")
def convert(source: str, output: str, prefix: str | None, force: bool) -> None:
    """Convert a weights file (.pth/.pt/.bin/.ckpt via torch.load(weights_only=True), or
    safetensors) into safetensors; prints the number of tensors and parameters."""
    from pathlib import Path

    from flemme_core.errors import CheckpointError, ConfigError

    out = Path(output)
    if out.suffix != ".safetensors":
        raise ConfigError(f"output {output!r} must end in .safetensors (the only format flemme writes weights in)")
    if out.exists() and not force:
        raise ConfigError(f"{output!r} exists; choose another name or pass --force to replace it")
    if Path(source).resolve() == out.resolve():
        raise ConfigError("source and output are the same file; write to another name")

    from flemme_core.checkpoint import atomic_write
    from flemme_core.weights import read_weights

    state = read_weights(source)
    if prefix:
        state = {k: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"no key of {source!r} starts with {prefix!r}; drop --prefix or fix it")
    from safetensors.torch import save_file

    # safetensors stores each tensor on its own: copy views/shared storage into contiguous tensors.
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "converted_from": Path(source).name}))
    count = sum(v.numel() for v in tensors.values())
    click.echo(f"wrote {output}: {len(tensors)} tensors, {count:,} values (from {source} via weights_only)")
