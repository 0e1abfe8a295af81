"""nox sessions. They run in the environment that `.ci/install` builds (torch installed once):

    bash .ci/install && .venv/bin/nox -s core plugins lint

Building a fresh venv per session would reinstall torch (~45 s, 1 GB) each time, so
sessions reuse the current interpreter (``venv_backend="none"``); every plugin is
still tested *installed*, through its entry point.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["core", "plugins", "example_plugin", "lint"]

ROOT = Path(__file__).parent
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())


@nox.session
def core(session: nox.Session) -> None:
    """The core's tests (registry, contract, CLI, checkpoints, training, data)."""
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugins(session: nox.Session, plugin: str) -> None:
    """One plugin's tests, against its installed distribution."""
    session.run("python", "-c", f"import importlib.metadata as m; print('{plugin}', m.version('{plugin}'))")
    session.run("python", "-m", "pytest", f"plugins/{plugin}", *session.posargs)


@nox.session
def example_plugin(session: nox.Session) -> None:
    """The third-party template, installed as a user would."""
    session.run("python", "-m", "pip", "install", "-q", "examples/flemme-plugin-template")
    session.run("python", "-m", "pytest", "examples/flemme-plugin-template/tests", *session.posargs)


def _isolated_targets() -> list[tuple[str, Path, str]]:
    """(name, project folder, tests folder) of the core, every plugin and the example plugin."""
    out = [("flemme-core", ROOT, "tests")]
    out += [(name, ROOT / "plugins" / name, f"plugins/{name}/tests") for name in PLUGINS]
    return out + [("flemme-convnext", ROOT / "examples/flemme-plugin-template", "examples/flemme-plugin-template/tests")]


def _local_requirements(project: Path) -> list[str]:
    """Local folders of the flemme distributions a project needs (declared or in its ``test``
    extra), recursively: they are not on the package index, so pip is given their paths."""
    import tomllib

    local = {"flemme-core": ROOT} | {name: ROOT / "plugins" / name for name in PLUGINS}
    found: dict[str, Path] = {}
    todo = [project]
    while todo:
        meta = tomllib.loads((todo.pop() / "pyproject.toml").read_text())["project"]
        for req in meta.get("dependencies", []) + meta.get("optional-dependencies", {}).get("test", []):
            name = req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
            if name in local and name not in found:
                found[name] = local[name]
                todo.append(local[name])
    return [str(path) for path in found.values()]


@nox.session(name="isolated")
def isolated(session: nox.Session) -> None:
    """flemme-core alone, and each plugin with ONLY its declared dependencies (its ``test``
    extra included), each in a fresh virtual environment, running its own tests there.

    torch is installed once into a base environment (``.nox/isolated/_torch``); every test
    environment is a fresh venv that sees that base through a ``.pth`` file and nothing else,
    so a plugin that imports an undeclared sibling fails here. ``nox -s isolated -- flemme-cnn``
    runs only the named targets. Not in the default sessions (minutes of installs).
    """
    import sys

    home = ROOT / ".nox" / "isolated"
    base = home / "_torch"
    site = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    if not (base / site / "torch").is_dir():
        session.run(sys.executable, "-m", "venv", "--clear", str(base))
        import torch  # the version of the environment nox runs in (the local CPU wheel)

        session.run(str(base / "bin/python"), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}")
    wanted = set(session.posargs)
    failed = []
    for name, project, tests in _isolated_targets():
        if wanted and name not in wanted:
            continue
        try:
            _isolated_run(session, home, base, site, name, project, tests)
        except nox.command.CommandFailed:
            failed.append(name)
    if failed:
        session.error(f"failed in isolation: {', '.join(failed)}")


def _isolated_run(session: nox.Session, home: Path, base: Path, site: str, name: str, project: Path,
                  tests: str) -> None:
    """One target: a fresh venv over the torch base, the project with its test extra, its tests."""
    import shutil
    import sys

    venv = home / name
    shutil.rmtree(venv, ignore_errors=True)
    session.run(sys.executable, "-m", "venv", str(venv))
    (venv / site / "_flemme_torch_base.pth").write_text(str((base / site).resolve()) + "\n")
    extra = "[test]"
    session.log(f"== {name}: {project.relative_to(ROOT) if project != ROOT else '.'}{extra} and its local dependencies")
    session.run(str(venv / "bin/python"), "-m", "pip", "install", "-q", f"{project}{extra}",
                *_local_requirements(project), "pytest")  # the runner, for a plugin without a test extra
    session.run(str(venv / "bin/python"), "-m", "pip", "check")
    session.run(str(venv / "bin/pytest"), tests, "-p", "no:cacheprovider", "-x", "-q", external=True)


@nox.session
def slow(session: nox.Session) -> None:
    """Tests marked slow: real data presets, end-to-end runs."""
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session
def pyramid_experiment(session: nox.Session) -> None:
    """Plain vs hierarchical (unet/hunet, ae/hae), 3 seeds, on the shipped real images: two
    ``flemme compare`` studies, then the background/tissue SSIM split of the recon cells."""
    # the exact commands of plugins/flemme-pyramid/README.md "Results" (finished cells are reused)
    for name in ("pyramid-seg", "pyramid-recon"):
        session.run("python", "-m", "flemme_core", "compare", f"plugins/flemme-pyramid/experiments/{name}.yaml",
                    "-o", f"runs/{name}", *session.posargs)
    session.run("python", "plugins/flemme-pyramid/experiments/recon_background.py",
                "--out", "runs/pyramid-recon", "--threads", "1")


@nox.session
def study(session: nox.Session) -> None:
    """The README's "Which encoder?" study (hours on 2 CPU threads; finished cells are reused):
    equal wall-clock time per cell, then equal steps. Not a default session."""
    spec = "benchmarks/studies/which-encoder.yaml"
    session.run("python", "-m", "flemme_core", "compare", spec, "-o", "studies/which-encoder", *session.posargs)
    session.run("python", "-m", "flemme_core", "compare", spec, "--budget", "steps=1000",
                "-o", "studies/which-encoder-steps", *session.posargs)


@nox.session
def mmfd_experiment(session: nox.Session) -> None:
    """MMFD's goals (teacher vs best branch, student vs teacher, the control without the fusion
    partner), 3 seeds, stardist and MNI152 tissue: one ``flemme compare`` study."""
    # the exact command of plugins/flemme-mmfd/README.md "The goals" (finished cells are reused)
    session.run("python", "-m", "flemme_core", "compare", "plugins/flemme-mmfd/experiments/mmfd.yaml",
                "-o", "runs/mmfd", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "flemme_core", "plugins", "examples", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark in benchmarks/ (each prints a markdown table)."""
    session.run("python", "-m", "pip", "install", "-q", "einops")  # MONAI's UNETR/SwinUNETR, the vit peers
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.log(f"== {script.name}")
        session.run("python", str(script), *session.posargs)
