"""The command hook: plugins add `flemme` subcommands lazily, named after their distribution."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest
from click.testing import CliRunner

import flemme_core
from flemme_core import hookimpl
from flemme_core.cli import main

MODULE = "flemme_toy_commands_mod"


@pytest.fixture
def toy_commands(tmp_path, monkeypatch):
    """A plugin registering three commands from a module that is not imported yet."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent('''
        import click
        from flemme_core.errors import ConfigError

        @click.command()
        @click.argument("who", default="world")
        def hello(who):
            """Say hello."""
            click.echo(f"hello {who}")

        @click.command()
        def boom():
            raise RuntimeError("the plugin's own bug")

        @click.command()
        def mistake():
            raise ConfigError("bad value for x; use 1")

        not_a_command = 42
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)

    def register_commands(register):
        register("hello", f"{MODULE}:hello", "say hello to someone")
        register("boom", f"{MODULE}:boom", "raises")
        register("mistake", f"{MODULE}:mistake", "a user mistake")
        register("notcmd", f"{MODULE}:not_a_command", "not a click command")
        register("broken", "flemme_no_such_module_xyz:cmd", "cannot import")
        register("build", f"{MODULE}:hello", "tries to replace a core command")

    plugin = types.SimpleNamespace(register_commands=hookimpl(register_commands))
    flemme_core.register_plugin(plugin, name="toy-commands")
    yield
    flemme_core.unregister_plugin(plugin)
    sys.modules.pop(MODULE, None)


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_register_commands(toy_commands):
    r = run("--help")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.strip().startswith("hello"))
    assert "say hello to someone" in line and "[toy-commands]" in line
    assert MODULE not in sys.modules, "--help imported the command's module"
    r = run("hello", "flemme")
    assert r.exit_code == 0 and r.output == "hello flemme\n"
    assert MODULE in sys.modules


def test_registered_commands_are_listed(toy_commands):
    r = run("list", "commands")
    assert r.exit_code == 0, r.output
    assert "hello" in r.output and "[toy-commands]" in r.output
    assert "command 'build' from toy-commands is hidden by the core command" in r.output


def test_core_command_wins_over_a_plugin_of_the_same_name(toy_commands):
    r = run("build", "--help")
    assert r.exit_code == 0 and "dummy batch" in r.output


@pytest.mark.parametrize("name, message", [
    ("broken", "Error: command 'broken' from toy-commands could not be loaded (flemme_no_such_module_xyz:cmd)"),
    ("notcmd", ("Error: command 'notcmd' from toy-commands: flemme_toy_commands_mod:not_a_command is a int, "
                "not a click.Command")),
    ("boom", "Error: error in plugin toy-commands: RuntimeError: the plugin's own bug"),
    ("mistake", "Error: bad value for x; use 1"),
])
def test_broken_commands_fail_as_one_line_naming_the_distribution(toy_commands, monkeypatch, name, message):
    monkeypatch.delenv("FLEMME_DEBUG", raising=False)
    r = run(name)
    assert r.exit_code == 2
    assert r.output.startswith(message), r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_flemme_debug_keeps_the_plugin_traceback(toy_commands, monkeypatch):
    monkeypatch.setenv("FLEMME_DEBUG", "1")
    r = run("boom")
    assert isinstance(r.exception, RuntimeError)


def test_unknown_command_is_still_clicks_error():
    r = run("no-such-command")
    assert r.exit_code == 2 and "No such command 'no-such-command'" in r.output


def test_help_lists_installed_plugin_commands_without_importing_them():
    """In a fresh process: every registered command listed, no command module or torch imported."""
    code = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from flemme_core.cli import main
        from flemme_core.registry import get_registry
        r = CliRunner().invoke(main, ['--help'])
        assert r.exit_code == 0, r.output
        for c in get_registry().components('command').values():
            assert c.name in r.output, c.name
            mod = c.factory.partition(':')[0] if isinstance(c.factory, str) else None
            assert mod not in sys.modules, mod
        heavy = [m for m in ('torch', 'monai', 'numpy') if m in sys.modules]
        assert not heavy, heavy
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
