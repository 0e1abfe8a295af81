"""Every `flemme ...` command in README.md is run (issue 19): list, plugins, build, info and the
documented errors end to end; train commands resolve their config and flags exactly as a run
would (no training); the others (demo, eval, predict, compare, torchrun, plugin commands) must
parse with their command's options. A README edit that breaks a command fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from flemme_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _strip_comment(line: str) -> str:
    return re.split(r"\s#\s", line, maxsplit=1)[0].strip()


def readme_commands() -> list[str]:
    """Command lines from code blocks (``flemme ...``, ``$ flemme ...``, ``torchrun ... -m flemme_core``),
    commands written in a comment (``# or flags: --encoder ...``) and inline `flemme ...` code."""
    found: list[str] = []
    in_block = False
    for raw in README.splitlines():
        if raw.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        line = raw.strip().removeprefix("$ ").replace(".venv/bin/flemme", "flemme")
        if "&&" in line:
            line = line.split("&&", 1)[1].strip()
        if line.startswith(("flemme ", "torchrun ")) or line == "flemme":
            found.append(_strip_comment(line))
            flags = re.search(r"# or flags: (--.*)$", raw)
            if flags:
                found.append("flemme train " + flags.group(1).strip())
    for inline in re.findall(r"`(flemme [^`]+)`", README):
        words = inline.split()
        if "<" not in inline and "..." not in inline and (len(words) > 2 or words[1] in RUN):
            found.append(inline.strip())
    return list(dict.fromkeys(found))


RUN = ("list", "plugins", "build", "info", "--help")
COMMANDS = readme_commands()


def _args(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] == "torchrun":
        words = ["flemme"] + words[words.index("flemme_core") + 1:]
    args = words[1:]
    return [str(ROOT / a) if a.startswith(("examples/", "plugins/")) and (ROOT / a).exists() else a for a in args]


def test_the_readme_has_the_commands_it_documents():
    kinds = {(_args(c) or ["--help"])[0] for c in COMMANDS}
    assert {"list", "plugins", "build", "info", "train", "eval", "predict", "demo"} <= kinds, kinds
    assert any("arch_options.supervised=true" in c for c in COMMANDS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


#: The family a ``build`` that names none gets in the README's outputs (the first installed
#: alphabetically, with every shipped plugin installed).
README_DEFAULT_ENCODER = "cnn"


def _plugin_components(command: str, args: list[str]) -> dict[str, set[str]]:
    """The components a README command needs, by kind: its ``--encoder``/``--arch``, its config's
    model, the README's default family for a ``build`` that names none, and the suggestions its
    documented error shows (a name the error calls unknown is not needed)."""
    import yaml

    needs: dict[str, set[str]] = {"encoder": set(), "architecture": set()}
    for flag, kind in (("--encoder", "encoder"), ("--arch", "architecture")):
        if flag in args[:-1]:
            needs[kind].add(args[args.index(flag) + 1])
    if "--config" in args[:-1]:
        model = yaml.safe_load(Path(args[args.index("--config") + 1]).read_text()).get("model", {})
        needs["encoder"].add((model.get("encoder") or {}).get("name", README_DEFAULT_ENCODER))
        needs["architecture"].add(model.get("arch", "unet"))
    if args[:1] == ["build"] and not needs["encoder"]:
        needs["encoder"].add(README_DEFAULT_ENCODER)
    shown = re.search(re.escape(f"$ {command}") + r"\n(Error: .*)", README)
    if shown:
        for kind, name in re.findall(r"unknown (encoder|architecture) '([^']+)'", shown.group(1)):
            needs[kind].discard(name)
        suggested = re.search(r"did you mean (.*?)\?", shown.group(1))
        needs["encoder"] |= set(re.findall(r"'([^']+)'", suggested.group(1))) if suggested else set()
    return needs


def _skip_without_plugins(command: str, args: list[str]) -> None:
    """The README's commands and outputs are those of the full install (every shipped plugin); with
    fewer (flemme-core alone, as ``nox -s isolated`` installs it) a command naming a component that
    is not installed is skipped, saying which. The rest still runs."""
    from flemme_core.registry import get_registry

    missing = sorted(f"{kind} {name}" for kind, names in _plugin_components(command, args).items()
                     for name in names if name not in get_registry().components(kind))
    if missing:
        pytest.skip(f"needs plugin components that are not installed: {', '.join(missing)}")


def test_readme_component_needs_are_read_from_the_command():
    """The skip above must not hide a README command in the full install: what it reads is checked."""
    config = str(ROOT / "examples/configs/cnn-unet-2d.yaml")
    assert _plugin_components("flemme build --encoder swin --arch ae", ["build", "--encoder", "swin", "--arch", "ae"]) \
        == {"encoder": {"swin"}, "architecture": {"ae"}}
    assert _plugin_components("flemme build --config x", ["build", "--config", config]) == \
        {"encoder": {"cnn"}, "architecture": {"unet"}}
    assert _plugin_components("flemme list", ["list"]) == {"encoder": set(), "architecture": set()}
    typo = "flemme build --encoder cnnn"
    assert typo in COMMANDS and _plugin_components(typo, _args(typo))["encoder"] == {"cnn", "convnext"}


@pytest.mark.parametrize("command", [c for c in COMMANDS if (_args(c) or ["--help"])[0] in RUN])
def test_readme_command_runs(command, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    args = _args(command)
    _skip_without_plugins(command, args)
    if args[:1] == ["info"] and not (workdir / args[1]).exists():  # the README writes it just before
        # the core's test family (tests/tiny_family.py): info needs no plugin
        small = ["build", "--encoder", "tiny", "--channels", "8,16", "--image-size", "32"]
        if args[1].endswith(".safetensors"):
            CliRunner().invoke(main, small + ["--save", args[1]])
        else:  # an exported file (`flemme export ... -o FILE`): export a small model to it
            CliRunner().invoke(main, small + ["--save", "small.safetensors"])
            exported = CliRunner().invoke(main, ["export", "small.safetensors", "-o", args[1]])
            if exported.exit_code != 0:
                pytest.skip(f"cannot export here: {exported.output.strip().splitlines()[-1:]}")
    result = CliRunner().invoke(main, args)
    shown = re.search(re.escape(f"$ {command}") + r"\n(Error: .*)", README)
    if shown:  # a documented error: exactly that line, non-zero exit
        expected = shown.group(1).split(" (available:")[0]  # the installed plugins vary: not the list
        assert result.exit_code != 0 and result.output.strip().splitlines()[-1].startswith(expected), result.output
    else:
        assert result.exit_code == 0, f"{command}\n{result.output}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if (_args(c) or ["--help"])[0] not in RUN])
def test_readme_command_parses(command, workdir, monkeypatch):
    """Commands that train or need a trained run: their options parse; train also resolves its config."""
    import click

    monkeypatch.chdir(workdir)
    args = _args(command)
    ctx = click.Context(main)
    cmd = main.get_command(ctx, args[0])
    assert cmd is not None, f"{command}: no such command"
    with cmd.make_context(args[0], args[1:], parent=ctx) as sub:  # raises on an unknown option or bad value
        params = sub.params
    if args[0] == "train":
        from flemme_core.cli_train import _run_config

        flags = {k: params[k] for k in ("encoder", "arch", "steps", "batch_size", "lr", "seed", "val_every",
                                         "device", "amp", "output") if k in params}
        run = _run_config(params.get("config_path"), params.get("data"), tuple(params.get("sets", ())), flags)
        assert run.data and run.output_dir.name
