"""The ``flemme`` command line.

Import-cheap: ``flemme --help`` and ``flemme list`` load click, pluggy and the entry
points only; torch and MONAI are imported inside the commands that build models.
User mistakes (:class:`FlemmeError`) print one ``Error:`` line and exit non-zero.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .errors import FlemmeError


class FlemmeGroup(click.Group):
    """The ``flemme`` group: core commands plus lazily registered ones (``register_commands``).

    Turns user mistakes into one line on stderr and a non-zero exit, no traceback.
    Registered commands are listed from their registration (name, description,
    distribution) and their module is imported only when the command is resolved to run.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlemmeError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # a write that failed outside an atomic write: full disk, read-only, ...
            from .diskio import as_output_error

            error = as_output_error(exc)
            if error is None:
                raise
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)

    @staticmethod
    def _registered() -> dict[str, Any]:
        from .registry import get_registry

        return get_registry().components("command")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._registered()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        component = self._registered().get(cmd_name)
        if component is None:
            return None
        from .commands import load_command

        return load_command(component)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, but registered commands are described without importing them."""
        from .registry import CORE_PROVIDER_NAME

        registered = self._registered()
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                cmd = self.commands[name]
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
            else:
                comp = registered[name]
                where = "" if comp.provider.name == CORE_PROVIDER_NAME else f"[{comp.provider.name}] "
                rows.append((name, where + (comp.description or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=FlemmeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flemme-core", prog_name="flemme")
def main() -> None:
    """flemme: build, train and compare any encoder family in any architecture (2D/3D medical images)."""


def shadowed_commands() -> list[str]:
    """Registered commands that a core command of the same name hides (the core's wins)."""
    from .registry import get_registry

    return [f"command {c.name!r} from {c.provider} is hidden by the core command of that name; "
            f"rename it in {c.provider.name}"
            for c in get_registry().components("command").values() if c.name in main.commands]


# ---------------------------------------------------------------------------------
@main.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False, default="*")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_components(kind: str | None, pattern: str, as_json: bool) -> None:
    """List registered components: encoders, architectures, losses, fusions, datasets.

    KIND filters by kind; PATTERN is a wildcard on names, e.g. `flemme list encoders 'sw*'`;
    a pattern alone matches names of every kind (`flemme list 'sw*'`).
    """
    import fnmatch

    from .registry import KINDS, get_registry, kind_from_plural

    registry = get_registry()
    if kind and pattern == "*" and (any(ch in kind for ch in "*?[") or
                                    any(kind in registry.components(k) for k in KINDS)):
        kind, pattern = None, kind  # `flemme list 'sw*'`: a name pattern across every kind
    kinds = [kind_from_plural(kind)] if kind else list(KINDS)
    rows = [c for k in kinds for c in registry.components(k).values() if fnmatch.fnmatch(c.name, pattern)]
    problems = registry.problems() + shadowed_commands()
    if as_json:
        click.echo(json.dumps({
            "components": [{"kind": c.kind, "name": c.name, "description": c.description,
                            "distribution": c.provider.name, "version": c.provider.version,
                            **({"takes_encoder": c.metadata.get("encoder", True) is not False}
                               if c.kind == "architecture" else {})} for c in rows],
            "problems": problems}, indent=2))
        return
    for k in kinds:
        group = sorted((c for c in rows if c.kind == k), key=lambda c: c.name)
        if not group:
            continue
        click.secho(f"{k}s:" if not k.endswith("s") else f"{k}es:", bold=True)
        width = max(len(c.name) for c in group)
        for c in group:
            mark = "(no encoder) " if c.kind == "architecture" and c.metadata.get("encoder", True) is False else ""
            click.echo(f"  {c.name:<{width}}  [{c.provider}]  {mark}{c.description}")
    if not rows:
        click.echo(f"no {'/'.join(kinds)} matches {pattern!r}")
    for line in problems:
        click.secho(f"problem: {line}", fg="yellow", err=True)


@main.command("plugins")
@click.option("--requirements", is_flag=True, help="Print installed plugin distributions as a requirements file.")
def list_plugins(requirements: bool) -> None:
    """Installed plugin distributions, their versions and load status."""
    from .registry import get_registry

    registry = get_registry()
    loaded = registry.loaded_plugins()
    failed = registry.failures
    if requirements:
        seen = set()
        for rec in loaded + [f for f in failed if f.provider.version]:
            if rec.provider.entry_point == "explicit" or rec.provider.name in seen or not rec.provider.version:
                continue
            seen.add(rec.provider.name)
            click.echo(f"{rec.provider.name}=={rec.provider.version}")
        return
    for rec, status in registry.plugin_status():  # one row per plugin: a half-failed one is FAILED
        where = "built in" if rec.provider.entry_point == "builtin" else rec.module
        click.echo(f"{rec.provider.name:<20} {rec.provider.version:<10} {status:<7} "
                   + (rec.error if status == "FAILED" else where))
    for line in [c.message() for c in registry.conflicts] + registry.unmatched + shadowed_commands():
        click.secho(f"problem: {line}", fg="yellow", err=True)


# ---------------------------------------------------------------------------------
def model_dict_from_cli(config_path: str | None, flags: dict[str, Any], overrides: tuple[str, ...],
                        notes: list[str] | None = None) -> dict[str, Any]:
    """Merge a YAML file's ``model:`` section, explicit flags and ``--set a.b=c`` overrides
    (:mod:`flemme_core.overrides`: null removes a key, a new family drops the old one's options)."""
    from .config import as_mapping, encoder_section, load_yaml
    from .overrides import apply_override, parse_set

    model: dict[str, Any] = {}
    if config_path:
        data = load_yaml(config_path)
        model = as_mapping(data.get("model", data), f"model: in {config_path}")
    model["encoder"] = encoder_section(model.get("encoder"))  # wrong types: one line naming the key
    mapping = {"encoder": ("encoder", "name"), "channels": ("encoder", "channels"),
               "num_blocks": ("encoder", "num_blocks"), "patch_size": ("encoder", "patch_size"),
               "norm": ("encoder", "norm"), "act": ("encoder", "act"), "arch": ("arch",), "dims": ("dims",),
               "image_size": ("image_size",), "in_channels": ("in_channels",), "out_channels": ("out_channels",)}
    for key, value in flags.items():
        if value is None:
            continue
        apply_override(model, ".".join(mapping[key]), value, notes)
    for item in overrides:
        key, value = parse_set(item)
        apply_override(model, key, value, notes)
    if not model["encoder"]:
        model.pop("encoder")
    return model


MODEL_OPTIONS = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config (its model: section)."),
    click.option("--encoder", help="Encoder family (see `flemme list encoders`). Default: the first installed one, announced."),
    click.option("--arch", help="Architecture (see `flemme list architectures`). Default: unet."),
    click.option("--dims", type=int, help="2 or 3. Default: 2 (or the length of --image-size)."),
    click.option("--image-size", "image_size", help="e.g. 128 or 96,128. Default: 128 per axis."),
    click.option("--in-channels", "in_channels", type=int, help="Default: 1."),
    click.option("--out-channels", "out_channels", type=int, help="Default: 2 (classes, or image channels)."),
    click.option("--channels", help="Encoder widths per level, e.g. 32,64,128,256."),
    click.option("--num-blocks", "num_blocks", type=int, help="Blocks per stage."),
    click.option("--patch-size", "patch_size", type=int, help="Stride of the stem."),
    click.option("--norm", help="batch | instance | group | layer | none."),
    click.option("--act", help="Activation (relu, gelu, silu, ...)."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="Any model key, e.g. --set encoder.block=res_conv --set arch_options.supervised=true."),
]


def model_options(func):
    for option in reversed(MODEL_OPTIONS):
        func = option(func)
    return func


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} "


def _format_summary(s: dict[str, Any]) -> str:
    cfg = s["config"]
    enc = s["resolved_encoder"]
    size = "×".join(map(str, cfg["image_size"]))
    with_encoder = f"with encoder {s['encoder']}" if s["encoder"] else "(no encoder: a whole network)"
    lines = [
        f"model        {s['arch']} {with_encoder} ({s['dims']}D, backend {s['backend']})",
        f"image        {size}, {cfg['in_channels']} channel(s) in, {cfg['out_channels']} out",
        f"parameters   {s['parameters']:,} ({s['trainable_parameters']:,} trainable"
        + (f"; encoder {s['encoder_parameters']:,})" if enc is not None else ")"),
        (f"cost         {_si(s['macs_per_sample'])}MACs per sample, forward at {size} "
         f"(a training step is about 3× that per sample)"),
        f"input        {tuple(s['input_shape'])}",
        "output       " + ", ".join(str(tuple(o)) for o in s["output_shapes"]),
    ]
    if enc is not None:
        lines += [
            f"encoder      channels {enc['channels']}, num_blocks {enc['num_blocks']}, patch_size {enc['patch_size']}, "
            f"norm {enc['norm']}, act {enc['act']}" + (f", options {enc['options']}" if enc["options"] else ""),
            "levels       (fine to coarse)",
        ]
    if s.get("network"):
        lines.append(f"network      {s['network']}")
    for lvl in s["levels"]:
        shape = tuple(lvl["shape"]) if lvl["shape"] else "?"
        lines.append(f"  {lvl['level']}  stride {lvl['stride']:>3}  channels {lvl['channels']:>4}  {shape}")
    if s["total_stride"]:
        lines.append(f"total stride {s['total_stride']} (image sizes must be divisible by it)")
    lines.append("versions     " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()))
    return "\n".join(lines)


def _complete_from_data(config_path: str, model: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """A config with a ``data:`` section: image size, dimensions, channels and classes come
    from the data exactly as ``flemme train`` resolves them (checked the same way)."""
    from .config import load_yaml

    data = load_yaml(config_path).get("data")
    if not isinstance(data, dict) or not data:
        return model
    from .data import check_data
    from .training.setup import complete_model_config

    info = check_data(data)
    model = complete_model_config(model, info)
    notes.append(f"image size {'x'.join(map(str, model['image_size']))} ({model['dims']}D), "
                 f"{model['in_channels']} channel(s) in, {model['out_channels']} out: from the config's data: "
                 f"section ({info.name}), as flemme train resolves them")
    return model


@main.command("build")
@model_options
@click.option("--batch-size", "batch_size", type=int, default=1, show_default=True, help="Dummy batch size.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False), help="Write the (initialised) model as safetensors.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def build_command(config_path, overrides, batch_size, save_path, as_json, **flags) -> None:
    """Build a model, run one forward pass on a dummy batch and print a summary.

    With only --encoder and --arch the defaults apply: 2D, 128×128, 1 channel in, 2 out.
    """
    notes: list[str] = []
    model_dict = model_dict_from_cli(config_path, flags, overrides, notes)
    if config_path:
        model_dict = _complete_from_data(config_path, model_dict, notes)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    from .build import build_model, summarize
    from .checkpoint import save_model

    model = build_model(model_dict)
    summary = summarize(model, batch_size)
    if save_path:
        save_model(model, save_path)
        summary["saved_to"] = save_path
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(_format_summary(summary))
        if save_path:
            click.echo(f"saved        {save_path}")


@main.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info_command(path: str, as_json: bool) -> None:
    """Show the config, versions and parameter count stored in a checkpoint (no model is built)."""
    from .export import is_exported

    if is_exported(path):  # .onnx / .pt2 / .ts written by `flemme export`: its own metadata
        from .export.metadata import info_text

        click.echo(info_text(path, as_json))
        return
    from .checkpoint import missing_plugins, read_metadata
    from .config import model_config_from_dict

    meta = read_metadata(path)  # validated: every field has its type
    missing = missing_plugins(meta, path)
    if as_json:
        click.echo(json.dumps({**meta, "missing": missing}, indent=2))
    else:
        cfg, model_cfg = meta["config"], model_config_from_dict(meta["config"])
        click.echo(f"file         {path} ({meta['file_bytes']:,} bytes, {meta['tensors']} tensors)")
        enc = model_cfg.encoder
        with_encoder = f"with encoder {enc.name or '(default)'}" if enc is not None else "(no encoder)"
        click.echo(f"model        {model_cfg.arch} {with_encoder} ({model_cfg.dims}D)")
        _info_rest(meta, cfg)
    for line in missing:  # the file is readable but cannot be used here: say why, exit non-zero
        click.echo(f"Error: {line}", err=True)
    if missing:
        sys.exit(2)


def _info_rest(meta: dict[str, Any], cfg: dict[str, Any]) -> None:
    click.echo(f"parameters   {meta['parameters']:,}")
    click.echo("versions     " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    click.echo("components   " + ", ".join(f"{k} <- {v}" for k, v in meta["components"].items()))
    click.echo("config       " + json.dumps(cfg, sort_keys=True))
    if isinstance(meta["extra"], dict) and "preprocessing" in meta["extra"]:
        from .data.preprocessing import describe

        click.echo("preprocess   " + describe(meta["extra"]["preprocessing"]) + " (what `flemme predict` applies)")
    if meta["extra"]:
        click.echo("extra        " + json.dumps(meta["extra"], sort_keys=True))


from .cli_train import demo_command, eval_command, predict_command, train_command

main.add_command(train_command)
main.add_command(eval_command)
main.add_command(predict_command)
main.add_command(demo_command)


def run() -> None:  # pragma: no cover - console entry for `python -m flemme_core`
    main(prog_name="flemme")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
