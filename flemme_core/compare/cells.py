"""A study's cells on disk: planned and checked before anything is written, then run one
process each under the cell's run-folder lock.

A cell folder is an ordinary run folder (``flemme eval``/``predict`` work on it) plus
``cell.yaml`` (what the study asked for) and, once measured, ``result.json``. Re-running
a study skips cells with a result, resumes cells with a run, refuses cells whose
``cell.yaml`` differs from what the study now asks (one line, before any cell runs) and
skips cells another process holds (another shard running them now). A cell that needs
other cells (:mod:`.depends`) runs once they have a result, in the same shard.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import set_dotted
from ..errors import ConfigError, FlemmeError
from .budget import build_cheaply, get_dotted
from .depends import CHECKPOINT, components, resolve
from .measure import CELL_SPEC, RESULT
from .study import Cell, Study


class CellFailed(FlemmeError):
    """A cell's process failed; the study goes on with the other cells."""

    exit_code = 1


@dataclasses.dataclass
class PlannedCell:
    cell: Cell
    spec: dict[str, Any]  # {"cell": identity, "run": the flemme train config}
    dir: Path
    parameters: int | None = None

    @property
    def result_path(self) -> Path:
        return self.dir / RESULT

    @property
    def needs(self) -> dict[str, str]:
        """Row -> path (relative to the study folder) of the cells this cell's references name."""
        return self.spec["cell"].get("needs", {})

    def study_dir(self) -> Path:
        return self.dir.parents[len(Path(self.cell.path).parts) - 1]

    def result(self) -> dict[str, Any] | None:
        if not self.result_path.exists():
            return None
        return json.loads(self.result_path.read_text())


def _identity(study: Study, cell: Cell) -> dict[str, Any]:
    out = {"row": cell.row.id, "dataset": cell.dataset.id, "seed": cell.seed, "path": cell.path,
           "baseline": study.baseline_of(cell.row)}
    if cell.row.variant:
        out["variant"] = cell.row.variant
    if cell.row.needs:
        out["needs"] = study.needed(cell)
    return out


def plan(study: Study, study_dir: Path, *, check_models: bool = True) -> list[PlannedCell]:
    """Every cell's spec; with ``check_models`` the data are checked, ``match: params`` is
    applied and every (row, dataset) model is built once on the meta device, so a bad option
    or an impossible match is one line before anything is written."""
    infos: dict[str, Any] = {}
    models: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
    planned = []
    for cell in study.cells():
        run = study.run_config(cell)
        parameters = None
        needed = {row: (study_dir / path).resolve() for row, path in study.needed(cell).items()}
        # a row that needs other cells is built once their checkpoints exist (it may read them)
        if check_models and all((d / CHECKPOINT).exists() for d in needed.values()):
            key = (cell.row.id, cell.dataset.id)
            if key not in models:
                data_key = json.dumps(run["data"], sort_keys=True, default=str)  # a row may change the data (its patch)
                if data_key not in infos:
                    infos[data_key] = _data_info(run["data"], cell.dataset.id)
                models[key] = _model(resolve(run["model"], needed), infos[data_key], cell)
            parameters = models[key][1]
            if cell.row.match:  # the matched widths (a row with references has no match)
                run["model"] = copy.deepcopy(models[key][0])
        planned.append(PlannedCell(cell, {"cell": _identity(study, cell), "run": run},
                                   (study_dir / cell.path).resolve(), parameters))
    return planned


def shard(planned: list[PlannedCell], index: int, count: int) -> list[PlannedCell]:
    """The ``index``-th of ``count`` parts (1-based): a cell and the cells it needs together."""
    paths = [p.cell.path for p in planned]
    groups = components(paths, {p.cell.path: p.needs.values() for p in planned})
    return [planned[i] for k, g in enumerate(groups) if k % count == index - 1 for i in g]


def unfinished_need(p: PlannedCell) -> str | None:
    """The first cell this cell needs that has no result yet (its path), or None."""
    root = p.study_dir()
    return next((path for path in p.needs.values() if not (root / path / RESULT).exists()), None)


def _data_info(data: dict[str, Any], name: str) -> Any:
    from ..data import check_data

    try:
        return check_data(data, seed=0)
    except FlemmeError as exc:
        raise ConfigError(f"dataset {name}: {exc}") from None


def _model(model: dict[str, Any], info: Any, cell: Cell) -> tuple[dict[str, Any], int]:
    """The model config a cell trains (matched to the row's parameter target) and its size."""
    from ..training.setup import complete_model_config
    from .budget import count_parameters, match_params

    where = f"row {cell.row.id} on {cell.dataset.id}"
    try:
        full = complete_model_config(model, info)
        match = cell.row.match
        if match:
            key, multiple = _width_key(model, match, where)
            full, n = match_params(full, match["params"], key=key, multiple=multiple, what=where,
                                   base=_default_widths(full, key))
            # the cell keeps only what the study set, plus the matched widths
            model = copy.deepcopy(model)
            set_dotted(model, key, get_dotted(full, key))
            return model, n
        if cell.row.variant:
            from ..training.inference import variant_of

            return model, sum(p.numel() for p in variant_of(build_cheaply(full), cell.row.variant).parameters())
        return model, count_parameters(full)
    except FlemmeError as exc:
        raise ConfigError(str(exc) if where in str(exc) else f"{where}: {exc}") from None


def _width_key(model: dict[str, Any], match: dict[str, Any], where: str) -> tuple[str, int]:
    """Which widths ``match: params`` scales: the encoder's channels, or for a reference network
    the arch option its registration names (metadata ``widths``, ``width_multiple``)."""
    if "encoder" in model:
        return match.get("key", "encoder.channels"), int(match.get("multiple", 8))
    from ..registry import get_registry

    meta = get_registry().get("architecture", model["arch"]).metadata
    key = match.get("key") or (f"arch_options.{meta['widths']}" if meta.get("widths") else None)
    if key is None:
        raise ConfigError(f"{where}: match: params needs the widths to scale; architecture {model['arch']!r} "
                          "declares none: give match: {params: N, key: arch_options.NAME}")
    return key, int(match.get("multiple", meta.get("width_multiple", 1)))


def _default_widths(model: dict[str, Any], key: str) -> Any:
    """The widths at ``key``, or the defaults the model fills in (read off a meta-device build:
    the encoder's channels, or the architecture's parsed ``options``)."""
    node = get_dotted(model, key)
    if node is not None:
        return node

    built = build_cheaply(model)
    if key == "encoder.channels":
        return list(built.encoder.feature_channels)
    name = key.split(".", 1)[1] if key.startswith("arch_options.") else key
    value = getattr(getattr(built, "options", None), name, None)
    return list(value) if isinstance(value, (list, tuple)) else value


def check_unchanged(planned: list[PlannedCell]) -> None:
    """A cell folder whose ``cell.yaml`` differs from the study's cell: one line, nothing run."""
    import yaml

    from ..training.setup import _differences

    for p in planned:
        path = p.dir / CELL_SPEC
        if not path.exists():
            continue
        try:
            previous = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            previous = {}
        # the run config as the study wrote it (references to other cells unresolved) and the variant
        diff = _differences({"train": {}, **previous.get("run", {}), "variant": previous.get("cell", {}).get("variant")},
                            {"train": {}, **p.spec["run"], "variant": p.spec["cell"].get("variant")})
        if diff:
            raise ConfigError(f"cell {p.cell.path} was run with a different config ({', '.join(diff[:3])} changed); "
                              f"delete {p.dir} to run it again, or write the study elsewhere with -o")


def run_cell(p: PlannedCell, threads: int | None, on_progress: Callable[[float, str], None],
             poll: float = 1.0, cpus: list[int] | None = None) -> dict[str, Any]:
    """Train and measure one cell in its own process (or return its result if it has one),
    pinned to ``cpus`` when given (:mod:`.workers`).

    Raises :class:`~flemme_core.training.runfolder.RunFolderBusy` when another process runs
    it, :class:`CellFailed` with the process's last line when it fails.
    """
    import yaml

    from ..checkpoint import atomic_write
    from ..training.runfolder import HELD_ENV, RunLock
    from .workers import cpus_env

    with RunLock(p.dir) as lock:
        check_unchanged([p])  # under the lock: another shard may have written it meanwhile
        done = p.result()
        if done is not None:
            return done
        text = yaml.safe_dump(p.spec, sort_keys=False)
        atomic_write(p.dir / CELL_SPEC, lambda tmp: Path(tmp).write_text(text))
        env = {**os.environ, HELD_ENV: lock.key}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env.update(cpus_env(cpus))
        log = p.dir / "cell.log"
        with open(log, "a") as err:
            proc = subprocess.Popen([sys.executable, "-m", "flemme_core.compare.measure", str(p.dir)],
                                    stdout=err, stderr=err, env=env)
            started = time.perf_counter()
            try:
                while proc.poll() is None:
                    time.sleep(poll)
                    on_progress(*_progress(p, time.perf_counter() - started))
            except BaseException:
                proc.terminate()
                proc.wait()
                raise
        if proc.returncode != 0:
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            raise CellFailed(f"cell {p.cell.path} failed: {last.removeprefix('Error: ')} (log: {log})")
        return json.loads(p.result_path.read_text())


def _progress(p: PlannedCell, elapsed: float) -> tuple[float, str]:
    """Fraction done and a short note, from the cell's metrics.jsonl (the trainer's log)."""
    train = p.spec["run"]["train"]
    steps, seconds = int(train.get("steps", 1000)), train.get("max_seconds")
    step, loss = 0, None
    path = p.dir / "metrics.jsonl"
    if path.exists():
        for line in reversed(path.read_text().splitlines()):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("split") == "train":
                step, loss = int(row.get("step", 0)), row.get("loss")
                break
    fraction = step / steps
    if seconds:
        fraction = max(fraction, min(1.0, elapsed / seconds))
    note = f"step {step}" + ("" if seconds else f"/{steps}") + (f" loss {loss:.4f}" if loss is not None else "")
    return min(fraction, 1.0), note
