"""nox sessions. They run in the environment that `.ci/install` builds (torch installed once):

    bash .ci/install && .venv/bin/nox -s core plugins lint

Building a fresh venv per session would reinstall torch (~45 s, 1 GB) each time, so
sessions reuse the current interpreter (``venv_backend="none"``); every plugin is
still tested *installed*, through its entry point.
"""

from __future__ import annotations

import re
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


def _local_requirements(project: Path) -> dict[str, Path]:
    """Local folders of the flemme distributions a project needs (declared, or in its own ``test``
    extra), and what those need in turn (their declared dependencies only: a dependency's test
    extra is not installed with it): they are not on the package index, so pip is given their paths."""
    import tomllib

    local = {"flemme-core": ROOT} | {name: ROOT / "plugins" / name for name in PLUGINS}
    found: dict[str, Path] = {}
    todo, top = [project], True
    while todo:
        meta = tomllib.loads((todo.pop() / "pyproject.toml").read_text())["project"]
        test = meta.get("optional-dependencies", {}).get("test", []) if top else []
        top = False
        for req in meta.get("dependencies", []) + test:
            name = re.split(r"[\s;\[<>=!~]", req, maxsplit=1)[0]
            if name in local and name not in found and local[name] != project:
                found[name] = local[name]
                todo.append(local[name])
    return found


#: What goes in WITHOUT its dependencies wherever a distribution is installed (the target or one
#: it needs), and the ``pip check`` lines that leaves (regular expressions), as ``.ci/install``
#: does: timm's metadata requires torchvision, which pulls a torch build of its own and does not
#: import beside the CPU torch; flemme-timm imports timm without it (``flemme_timm.timm_import``)
#: and so cannot declare it.
NO_DEPS: dict[str, tuple[list[str], list[str]]] = {
    "flemme-timm": (["timm>=1.0.9"], [r"timm \S+ requires torchvision, which is not installed\."]),
}


@nox.session(name="isolated")
def isolated(session: nox.Session) -> None:
    """flemme-core alone, and each plugin with ONLY its declared dependencies (its ``test``
    extra included), each in a fresh virtual environment, running its own tests there.

    torch is installed once into a base environment (``.nox/isolated/_torch``); every test
    environment is a venv that sees that base through a ``.pth`` file and nothing else, so a
    plugin that imports an undeclared sibling fails here. A target's venv is kept and reused
    while the ``pyproject.toml`` files it was built from are unchanged (its flemme projects are
    reinstalled, nothing else: the same packages as a fresh venv); otherwise it is rebuilt.
    ``nox -s isolated -- flemme-cnn flemme-vit -k family`` runs only the named targets; the
    other arguments go to pytest. Not in the default sessions (minutes of installs).
    """
    import sys

    home = ROOT / ".nox" / "isolated"
    base = home / "_torch"
    site = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    if not (base / site / "torch").is_dir():
        session.run(sys.executable, "-m", "venv", "--clear", str(base))
        import torch  # the version of the environment nox runs in (the local CPU wheel)

        session.run(str(base / "bin/python"), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}")
    targets = _isolated_targets()
    wanted = {a for a in session.posargs if a in {name for name, _, _ in targets}}
    pytest_args = [a for a in session.posargs if a not in wanted]
    failed = []
    for name, project, tests in targets:
        if wanted and name not in wanted:
            continue
        try:
            _isolated_run(session, home / name, base, site, name, project, [tests, *pytest_args])
        except nox.command.CommandFailed:
            failed.append(name)
    if failed:
        session.error(f"failed in isolation: {', '.join(failed)}")


def _no_deps(distributions: set[str]) -> tuple[list[str], list[str]]:
    """The NO_DEPS packages and tolerated ``pip check`` lines of these distributions."""
    entries = [NO_DEPS[d] for d in sorted(distributions) if d in NO_DEPS]
    return [p for pkgs, _ in entries for p in pkgs], [t for _, tol in entries for t in tol]


def _isolated_stamp(project: Path, local: dict[str, Path], no_deps: list[str]) -> str:
    """What a target's venv was built from: the pyproject files of its flemme projects and the
    no-deps packages. Equal stamps give the same installed packages."""
    import hashlib
    import sys

    digest = hashlib.sha256(f"{sys.version}\n{no_deps}".encode())
    for folder in [project, *local.values()]:
        digest.update((folder / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def _isolated_run(session: nox.Session, venv: Path, base: Path, site: str, name: str, project: Path,
                  pytest_args: list[str]) -> None:
    """One target: a venv over the torch base, the project with its test extra, its tests."""
    import shutil
    import sys

    python = str(venv / "bin/python")
    local = _local_requirements(project)
    no_deps, tolerated_checks = _no_deps({name, *local})
    paths = [str(p) for p in local.values()]
    stamp, stamp_file = _isolated_stamp(project, local, no_deps), venv / "flemme-isolated.stamp"
    where = project.relative_to(ROOT) if project != ROOT else "."
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        session.log(f"== {name}: reusing {venv} (same pyproject files); reinstalling {where} and its local dependencies")
        session.run(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(project), *paths)
    else:
        shutil.rmtree(venv, ignore_errors=True)
        session.run(sys.executable, "-m", "venv", str(venv))
        (venv / site / "_flemme_torch_base.pth").write_text(str((base / site).resolve()) + "\n")
        session.log(f"== {name}: {where}[test] and its local dependencies {', '.join(local) or '(none)'}")
        session.run(python, "-m", "pip", "install", "-q", f"{project}[test]", *paths,
                    "pytest")  # the runner, for a plugin without a test extra
        if no_deps:
            session.log(f"== {name}: without their dependencies (see NO_DEPS): {', '.join(no_deps)}")
            session.run(python, "-m", "pip", "install", "-q", "--no-deps", *no_deps)
        stamp_file.write_text(stamp)
    report = session.run(python, "-m", "pip", "check", silent=True, success_codes=[0, 1], stderr=None) or ""
    lines = [ln.strip() for ln in report.splitlines() if ln.strip() and not ln.startswith("No broken")]
    tolerated = [ln for ln in lines if any(re.fullmatch(t, ln) for t in tolerated_checks)]
    broken = [ln for ln in lines if ln not in tolerated]
    session.log(f"== {name}: pip check: {'; '.join(broken) or 'clean'}"
                + (f" (tolerated, see NO_DEPS: {'; '.join(tolerated)})" if tolerated else ""))
    if broken:
        raise nox.command.CommandFailed(f"pip check: {len(broken)} broken requirement(s)")
    # -rs: what was skipped here and why (a skip in isolation can hide an undeclared dependency)
    session.run(str(venv / "bin/pytest"), *pytest_args, "-p", "no:cacheprovider", "-rs", external=True)


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
    equal wall-clock time per cell; the identity-mixer controls, then every 2D row at 300 equal
    steps (one folder); then the whole study at 1,000 steps (the 3D rows: a GPU job). Not a
    default session. On a 2-core CPU: ``nox -s study -- --threads 1 --workers 2``."""
    spec = "benchmarks/studies/which-encoder.yaml"
    session.run("python", "-m", "flemme_core", "compare", spec, "-o", "studies/which-encoder", *session.posargs)
    for steps_2d in ("mixer-equal-steps", "which-encoder-steps-2d"):  # one folder: the second reuses the first's cells
        session.run("python", "-m", "flemme_core", "compare", f"benchmarks/studies/{steps_2d}.yaml",
                    "-o", "studies/steps-2d", *session.posargs)
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
