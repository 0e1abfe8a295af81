"""``flemme export``: a checkpoint -> ONNX / torch.export (.pt2) / TorchScript, verified."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The file to write: .onnx, .pt2 (torch.export) or .ts (TorchScript).")
@click.option("--format", "fmt", default="auto", show_default=True,
              help="auto (from the suffix) | onnx | torch-export | torchscript.")
@click.option("--portable", is_flag=True,
              help="ONNX with standard operators only, for runtimes outside flemme (default: plugins' fused "
                   "custom ops, e.g. mamba's scan, which need the plugin installed to run).")
def export(checkpoint: str, output: str, fmt: str, portable: bool) -> None:
    """Export a checkpoint for deployment, checked against the eager model.

    The file holds the inference graph (dynamic batch; dynamic spatial axes within the
    model's divisibility rule, or fixed at the patch size when the model cannot be traced
    so), and the model config, versions, class names and recorded preprocessing, so that
    `flemme predict FILE image -o out` needs nothing else (ONNX Runtime for .onnx). The
    written file is run on random inputs of the patch size and of a second size and
    compared with the eager model; above a relative error of 1e-4 nothing is kept and the
    command fails. ONNX files use the plugins' fused custom ops where they have one (recorded
    in the file; `flemme predict` registers them); --portable writes standard operators only.
    """
    from ..export.exporter import export_checkpoint

    meta = export_checkpoint(checkpoint, output, fmt, log=lambda text: click.echo(text, err=True),
                             portable=portable)
    from ..export.metadata import shape_rule_text

    click.echo(f"{checkpoint} -> {output} ({meta['format_name']}; input {shape_rule_text(meta['input'])})")
