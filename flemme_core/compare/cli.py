"""``flemme compare``: the click command (registered by the core through ``register_commands``).

Import-cheap at the top (click only); the study machinery is imported when it runs.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from ..cli_options import data_option, output_option, quiet_option, yaml_file_argument

STUDY_FILE = "study.yaml"


@click.command("compare")
@yaml_file_argument("study_file")
@click.option("--encoders", help="Encoder rows, comma-separated; options after colons: cnn,mamba,mamba:mixer=identity.")
@click.option("--arch", help="Architectures, comma-separated (one that takes no encoder is one reference row).")
@data_option("Datasets, comma-separated: presets (`flemme list datasets`), datalist .json or IMAGES:LABELS.")
@click.option("--seeds", type=int, help="Seeds per cell: 3 runs seeds 0, 1, 2.")
@click.option("--budget", help="Per cell: steps=600 (equal steps) or seconds=180 (equal wall-clock training time).")
@click.option("--match-params", "match", type=float, help="Scale every row's widths to this parameter count (±10%).")
@click.option("--baseline", help="The row the others are compared with (default: the first row).")
@click.option("--threads", type=int, help="torch threads per cell (train.threads).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run side by side, each worker pinned to its own --threads cores (default: an equal share).")
@output_option("Study folder (default studies/<study name>).")
@click.option("--shard", metavar="I/N", help="Run only the I-th of N parts of the cells (e.g. 2/4); finished cells are skipped.")
@click.option("--table-only", is_flag=True, help="Only rebuild the report from the finished cells.")
@quiet_option("No progress lines (the table is still printed).")
def compare(study_file: str | None, encoders: str | None, arch: str | None, data: str | None, seeds: int | None,
            budget: str | None, match: float | None, baseline: str | None, threads: int | None,
            workers: int, output: str | None, shard: str | None, table_only: bool, quiet: bool) -> None:
    """Compare encoders x architectures x datasets x seeds on equal terms, one run folder per cell.

    \b
    flemme compare --encoders cnn,swin,mamba --arch unet --data stardist-nuclei-2d --seeds 3 --budget steps=600 -o studies/nuclei
    flemme compare study.yaml                        # rows with their own options, reference rows, several datasets
    flemme compare study.yaml --budget seconds=180   # equal wall-clock training time per cell
    flemme compare study.yaml --shard 2/4            # a quarter of the cells (another machine, an array job)
    flemme compare study.yaml --threads 1 --workers 2   # two cells at a time, each pinned to its own core
    flemme compare study.yaml --table-only           # rebuild the report from the finished cells
    The study folder holds cells/ (ordinary run folders), study.yaml (the resolved study) and
    report.md/.csv/.json/.png. Re-running continues: finished cells are skipped, interrupted ones resume.
    """
    from ..errors import ConfigError
    from .budget import parse_shard
    from .study import load_study

    index, count = parse_shard(shard)
    if study_file is None and not encoders and not arch and output and (Path(output) / STUDY_FILE).exists():
        study_file = str(Path(output) / STUDY_FILE)  # the study a folder holds: --table-only -o studies/x
    if study_file is None and not (arch or encoders):
        raise ConfigError("give a study file, or --encoders and --arch with --data (see flemme compare --help)")
    study = load_study(study_file, encoders=encoders, archs=arch, data=data, seeds=seeds, budget=budget,
                       baseline=baseline, threads=threads, match=match)
    if study_file is None:
        from .study import slug

        study.name = slug("-".join(d.id for d in study.datasets))
    out = Path(output or Path("studies") / study.name)
    stopped_by: list[int] = []

    def terminate(signum: int, frame: object) -> None:  # a batch scheduler's SIGTERM: stop as Ctrl-C does
        stopped_by.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        failures = _run(study, out, index, count, table_only, quiet, workers)
    except KeyboardInterrupt:
        click.echo(f"interrupted; run the same command again to continue (finished cells in {out} are kept)", err=True)
        sys.exit(128 + (stopped_by[0] if stopped_by else signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failures:
        sys.exit(1)


def _run(study: Any, out: Path, index: int, count: int, table_only: bool, quiet: bool, workers: int = 1) -> int:
    from ..errors import ConfigError
    from ..training.runfolder import RunFolderBusy
    from .cells import CellFailed, check_unchanged, plan, run_cell, shard, unfinished_need
    from .progress import StudyProgress
    from .report import summarize, write_report
    from .workers import CellQueue, check_stopped, run_workers, worker_cpus

    if table_only and not out.is_dir():
        raise ConfigError(f"--table-only: the study folder {str(out)!r} does not exist; check -o")
    cpus = [None] if table_only else worker_cpus(workers, study.threads)  # a bad --workers: before anything is written
    # --table-only builds no model unless widths are matched (the cells' configs hold the matched widths)
    planned = plan(study, out, check_models=not table_only or any(r.match for r in study.rows))
    check_unchanged(planned)  # every check has passed once this returns: only now is anything written
    mine = shard(planned, index, count)  # a cell and the cells it needs are in the same shard
    failures = 0
    if not table_only:
        _write_study(out, study)
        todo = [p for p in mine if p.result() is None]
        progress = StudyProgress(len(mine), len(todo), study.longest_seconds(), quiet=quiet, workers=len(cpus))
        part = f" (shard {index}/{count})" if count > 1 else ""
        side = f"; {len(cpus)} workers" + (f" pinned to cores {', '.join(_cores(c) for c in cpus)}"
                                           if cpus[0] is not None else "") if len(cpus) > 1 else ""
        progress.message(f"study {study.name}: {len(planned)} cells{part}, {len(mine) - len(todo)} finished, "
                         f"{len(todo)} to run; budget per cell {study.budget_text()}; folder {out}{side}")
        number = {p.cell.path: k for k, p in enumerate(mine, 1)}
        failed: set[str] = set()
        queue = CellQueue(todo, lambda p: p.needs.values(), lambda p: p.cell.path)

        def work(p: Any, cores: list[int] | None) -> None:
            k = number[p.cell.path]
            need = unfinished_need(p)  # run earlier, unless it failed or another process holds it
            if need in failed:
                failed.add(p.cell.path)
                progress.fail(k, p.cell.label, f"needs {need}, which failed")
                return
            if need is not None:
                progress.skip(k, p.cell.label, f"needs {need}, which has no result yet (another process is running "
                                               "it); run the study again once it has finished")
                return
            progress.start(k, p.cell.label)

            def on_progress(fraction: float, note: str) -> None:
                check_stopped(queue)
                progress.update(k, fraction, note)

            try:
                result = run_cell(p, study.threads, on_progress, cpus=cores)
            except RunFolderBusy:
                progress.skip(k, p.cell.label, "another process is running it")
                return
            except CellFailed as exc:
                failed.add(p.cell.path)
                progress.fail(k, p.cell.label, str(exc))
                return
            progress.done(k, p.cell.label, _cell_summary(result))

        run_workers(queue, cpus, work)
        failures = len(failed)
    results = [r for r in (p.result() for p in planned) if r is not None]
    if table_only and not results:
        raise ConfigError(f"--table-only: no finished cell in {str(out)!r}; run the study first")
    missing = [p.cell.path for p in planned if not p.result_path.exists()]
    entries = summarize(results, [r.id for r in study.rows], [d.id for d in study.datasets], study.metric,
                        study.bootstrap)
    files = write_report(out, {**study.to_dict(), "cells": len(planned), "budget_text": study.budget_text()},
                         entries, missing)
    click.echo((out / "report.md").read_text())
    click.echo("wrote " + ", ".join(str(f) for f in files.values()), err=True)
    return failures


def _cores(cpus: list[int] | None) -> str:
    """Cores as a short range: 0-3, or 5."""
    if not cpus:
        return "?"
    if len(cpus) > 2 and cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def _write_study(out: Path, study: Any) -> None:
    import yaml

    from ..checkpoint import atomic_write

    text = yaml.safe_dump(study.to_dict(), sort_keys=False)
    atomic_write(out / STUDY_FILE, lambda tmp: Path(tmp).write_text(text))


def _cell_summary(result: dict[str, Any]) -> str:
    metric = "dice" if result["task"] == "segmentation" else "psnr"
    value = result["metrics"].get(metric)
    train = result["train"]
    shown = f"{metric} {value:.4f}" if isinstance(value, float) else f"{metric} ?"
    cut = " (time budget)" if train.get("stopped_by") == "seconds" else ""
    return f"{shown}, {train.get('steps_trained')} steps{cut} in {train.get('train_seconds') or 0:.0f} s"
