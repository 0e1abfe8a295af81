"""Issue 20, plugins: a broken or hostile plugin never takes the CLI down, conflicts ask which one to
keep, a raising hook registers nothing, and a checkpoint never chooses what the user installs.

Fake distributions (as tests/test_registry.py) beside the real ones; tmp modules only.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from reliability_helpers import FakeDist, quick, run
from train_helpers import write_config

from flemme_core import registry

QUICK = quick()


@pytest.fixture
def with_plugins(tmp_path, monkeypatch):
    """Install fake distributions (modules written to tmp) beside the real ones; a fresh registry."""
    real = registry.importlib_metadata.distributions
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(modules: dict[str, str], *dists: FakeDist) -> None:
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
            monkeypatch.delitem(__import__("sys").modules, name, raising=False)
        monkeypatch.setattr(registry.importlib_metadata, "distributions", lambda: [*real(), *dists])
        registry.reset_registry()

    yield install
    monkeypatch.undo()
    registry.reset_registry()


EXITING_MODULE = "import sys\nsys.exit(3)\n"
EXITING_HOOK = """
from flemme_core import hookimpl

@hookimpl
def register_encoders(register):
    register("exiter", "nowhere:factory")
    raise SystemExit(3)
"""


@pytest.mark.parametrize("source", [EXITING_MODULE, EXITING_HOOK], ids=["module", "hook"])
def test_a_plugin_calling_sys_exit_does_not_take_the_cli_down(with_plugins, tmp_path, source):
    with_plugins({"flemme_exiting_mod": source}, FakeDist("flemme-exiting", "0.1", {"x": "flemme_exiting_mod"}))
    listed = run("list", "encoders")
    assert listed.exit_code == 0 and "tiny" in listed.stdout
    assert "flemme-exiting" in listed.stderr and "SystemExit" in listed.stderr
    assert "exiter" not in listed.stdout  # registered, then the hook exited: not kept
    plugins = run("plugins")
    assert plugins.exit_code == 0
    rows = [line for line in plugins.stdout.splitlines() if line.startswith("flemme-exiting")]
    assert len(rows) == 1 and "FAILED" in rows[0], plugins.stdout
    built = run("build", "--encoder", "tiny", "--image-size", "32")
    assert built.exit_code == 0, built.output
    cfg = write_config(tmp_path / "cfg.yaml", QUICK)
    trained = run("train", str(cfg), "-o", str(tmp_path / "run"), "-q")
    assert trained.exit_code == 0, trained.output


def test_a_hook_raising_after_registering_registers_nothing_and_is_listed_once(with_plugins):
    with_plugins({"flemme_half_mod": """
        from flemme_core import hookimpl

        @hookimpl
        def register_encoders(register):
            register("half_a", "flemme_half_mod:nothing", "first")
            register("half_b", "flemme_half_mod:nothing", "second")
            raise RuntimeError("broke after registering two")
        """}, FakeDist("flemme-half", "0.3", {"h": "flemme_half_mod"}))
    encoders = registry.get_registry().components("encoder")
    assert "half_a" not in encoders and "half_b" not in encoders
    bad = run("build", "--encoder", "half_a")
    assert bad.exit_code == 2 and "unknown encoder 'half_a'" in bad.stderr and "flemme-half" in bad.stderr
    rows = [line for line in run("plugins").stdout.splitlines() if line.startswith("flemme-half")]
    assert len(rows) == 1 and "FAILED" in rows[0] and "broke after registering two" in rows[0]


def test_a_factory_of_the_wrong_type_names_its_distribution(with_plugins):
    with_plugins({"flemme_wrong_mod": """
        from flemme_core import hookimpl

        def factory(config):
            return 5

        def exiting(config):
            raise SystemExit(4)

        @hookimpl
        def register_encoders(register):
            register("wrongtype", "flemme_wrong_mod:factory")
            register("exitfactory", "flemme_wrong_mod:exiting")
        """}, FakeDist("flemme-wrong", "0.2", {"w": "flemme_wrong_mod"}))
    result = run("build", "--encoder", "wrongtype")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "flemme-wrong 0.2" in result.stderr and "returned int" in result.stderr
    result = run("build", "--encoder", "exitfactory")
    assert result.exit_code == 2 and "flemme-wrong" in result.stderr and "sys.exit" in result.stderr


def test_duplicate_names_ask_which_to_keep_and_offer_either(with_plugins):
    source = """
        from flemme_core import hookimpl

        @hookimpl
        def register_encoders(register):
            register("tiny", "x:y", "a second tiny")
        """
    with_plugins({"flemme_clash_mod": source}, FakeDist("flemme-clash", "9.9", {"c": "flemme_clash_mod"}))
    result = run("build", "--encoder", "tiny")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "which one to keep" in line and "flemme-clash 9.9" in line and "tiny-family" in line
    assert "FLEMME_DISABLE_PLUGINS=flemme-clash" in line and "FLEMME_DISABLE_PLUGINS=tiny-family" in line


def test_list_json_reports_the_failure_without_dying(with_plugins):
    with_plugins({"flemme_exiting_mod2": EXITING_MODULE}, FakeDist("flemme-exit2", "1", {"e": "flemme_exiting_mod2"}))
    result = run("list", "--json")
    assert result.exit_code == 0
    assert any("flemme-exit2" in p for p in json.loads(result.stdout)["problems"])
