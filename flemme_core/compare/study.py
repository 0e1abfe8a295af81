"""A study: rows x datasets x seeds, from a YAML file or from ``flemme compare`` flags.

A **row** is an architecture with an optional encoder family and options; a **reference
row** is an architecture registered as taking no encoder (MONAI's networks through a
plugin), trained by the same trainer, loss, data, budget and evaluation. Flags and files
go through the same parser, so ``--encoders cnn,swin --arch unet`` is the file::

    encoders: [cnn, swin]          # crossed with architectures (a reference arch: one row)
    architectures: [unet]
    rows:                          # more rows, each with its own options
      - {name: small-cnn, encoder: {name: cnn, channels: [8, 16, 32]}, arch: unet}
      - {arch: monai-unet}
    datasets: [stardist-nuclei-2d, {name: tissue, preset: mni152-tissue-3d, patch_size: [48, 48, 48]}]
    seeds: 3
    budget: {steps: 600}           # or {seconds: 180}
    baseline: cnn+unet             # the row every other row is compared with (default: the first)

A row may train from another row's cell of the same seed and dataset: ``${cells.ROW.checkpoint}``
in its options (:mod:`.depends`); ``variant: NAME`` evaluates one of the trained model's
``evaluation_variants()`` (e.g. a distillation run's ``teacher``) instead of the model itself.

Names are checked against the registry here (one line with close matches), before
anything is written. This module is torch-free.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

from ..config import _check_keys, load_yaml
from ..errors import ConfigError, FlemmeError, unknown_name_message
from .budget import Budget, parse_budget
from .depends import run_order, set_needs

STUDY_KEYS = ["name", "encoders", "architectures", "rows", "datasets", "seeds", "budget", "baseline", "metric",
              "bootstrap", "threads", "model", "data", "train", "match"]
ROW_KEYS = ["name", "encoder", "arch", "arch_options", "model", "data", "train", "match", "baseline", "datasets",
            "variant"]
DATASET_SECTION_KEYS = ("name", "model", "train", "budget")
MATCH_KEYS = ["params", "key", "multiple"]
#: what a cell's training always sets (validation only at the end: the study evaluates once)
CELL_TRAIN_DEFAULTS = {"val_every": 0, "progress": False}
#: the trainer's own final validation in a cell computes only this (HD95 over 117 classes is
#: minutes): the cell then evaluates every metric of the task, per item, once
CHEAP_METRIC = {"segmentation": "dice", "reconstruction": "psnr"}


@dataclasses.dataclass
class Row:
    id: str
    arch: str
    encoder: dict[str, Any] | None = None  # None: a reference row (the architecture takes no encoder)
    arch_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    match: dict[str, Any] | None = None
    baseline: str | None = None
    datasets: list[str] | None = None
    variant: str | None = None  # evaluate this one of the model's evaluation_variants()
    needs: list[str] = dataclasses.field(default_factory=list)  # rows whose cells its options refer to

    @property
    def slug(self) -> str:
        return slug(self.id)


@dataclasses.dataclass
class DatasetSpec:
    id: str
    data: dict[str, Any]
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget: Budget | None = None  # this dataset's own budget (e.g. its own seconds); --budget overrides it


@dataclasses.dataclass
class Cell:
    row: Row
    dataset: DatasetSpec
    seed: int

    @property
    def path(self) -> str:
        """Relative to the study folder."""
        return f"cells/{self.row.slug}/{slug(self.dataset.id)}/seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.row.id} · {self.dataset.id} · seed {self.seed}"


@dataclasses.dataclass
class Study:
    name: str
    rows: list[Row]
    datasets: list[DatasetSpec]
    seeds: list[int]
    budget: Budget
    baseline: str
    metric: str | None = None
    bootstrap: int = 10000
    threads: int | None = None
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Seeds outermost, so a partial study covers every row and dataset; within a seed and
        dataset a row comes after the rows whose cells it needs."""
        by_id = {r.id: r for r in self.rows}
        rows = [by_id[i] for i in run_order({r.id: r.needs for r in self.rows})]
        return [Cell(row, ds, seed) for seed in self.seeds for ds in self.datasets for row in rows
                if row.datasets is None or ds.id in row.datasets]

    def needed(self, cell: Cell) -> dict[str, str]:
        """The cells (paths relative to the study folder) that a cell's references name, by row."""
        by_id = {r.id: r for r in self.rows}
        return {name: Cell(by_id[name], cell.dataset, cell.seed).path for name in cell.row.needs}

    def budget_text(self) -> str:
        """The budget per cell in words (per dataset when datasets have their own)."""
        if all(d.budget is None for d in self.datasets):
            text = self.budget.describe()
        else:
            text = "; ".join(f"{d.id}: {(d.budget or self.budget).describe()}" for d in self.datasets)
        own = [f"{r.id} {steps}" for r in self.rows if (steps := _own_steps(r.train))]
        return text + (f"; rows with their own steps: {', '.join(own)}" if own else "")

    def longest_seconds(self) -> float | None:
        """The largest wall-clock budget of a cell (for the first ETA), if any."""
        seconds = [b.seconds for b in [self.budget, *(d.budget for d in self.datasets)] if b and b.seconds]
        return max(seconds) if seconds else None

    def baseline_of(self, row: Row) -> str:
        return row.baseline or self.baseline

    def run_config(self, cell: Cell) -> dict[str, Any]:
        """The ``flemme train`` config of a cell (before ``match: params``), output excluded."""
        row, ds = cell.row, cell.dataset
        model = merge(self.model, ds.model, row.model)
        model["arch"] = row.arch
        if row.arch_options:
            model["arch_options"] = merge(model.get("arch_options") or {}, row.arch_options)
        if row.encoder is not None:
            model["encoder"] = merge(_as_encoder(model.get("encoder")), row.encoder)
        else:
            model.pop("encoder", None)
        data = merge(self.data, ds.data, row.data)
        train = merge(CELL_TRAIN_DEFAULTS, self.train, ds.train, row.train, (ds.budget or self.budget).train_keys())
        train["seed"] = cell.seed
        task = _task(row.arch)
        if "metrics" not in train and task in CHEAP_METRIC:  # the cell evaluates every metric once, afterwards
            train["metrics"] = [CHEAP_METRIC[task]]
        if self.threads:
            train["threads"] = self.threads
        if "save_every" not in train:  # a killed cell loses at most a tenth of its steps
            steps = int(train.get("steps", 1000))
            train["save_every"] = 50 if "max_seconds" in train else max(1, min(steps, max(10, steps // 10)))
        return {"model": model, "data": data, "train": train}

    def to_dict(self) -> dict[str, Any]:
        """The resolved study (every row spelt out), written into the study folder."""
        rows = []
        for r in self.rows:
            row = {"name": r.id, "arch": r.arch}
            for key in ("encoder", "arch_options", "model", "data", "train", "match", "baseline", "datasets", "variant"):
                value = getattr(r, key)
                if value:
                    row[key] = copy.deepcopy(value)
            rows.append(row)
        budget = _budget_dict(self.budget)
        datasets = [{"name": d.id, **copy.deepcopy(d.data), **({"model": d.model} if d.model else {}),
                     **({"train": d.train} if d.train else {}),
                     **({"budget": _budget_dict(d.budget)} if d.budget else {})} for d in self.datasets]
        out = {"name": self.name, "rows": rows, "datasets": datasets, "seeds": list(self.seeds), "budget": budget,
               "baseline": self.baseline, "metric": self.metric, "bootstrap": self.bootstrap,
               "threads": self.threads, "model": self.model, "data": self.data, "train": self.train}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}


# -- helpers --------------------------------------------------------------------------------
def _own_steps(train: dict[str, Any]) -> str:
    """A row's own stage step counts (``train.stages.<name>.steps``) in words: the study's step
    budget sets ``train.steps``, which such stages do not follow, so the budget line must say so."""
    stages = train.get("stages") if isinstance(train.get("stages"), dict) else {}
    staged = [f"{name} {spec['steps']}" for name, spec in stages.items() if isinstance(spec, dict) and "steps" in spec]
    return f"(stages: {', '.join(staged)})" if staged else ""


def _budget_dict(budget: Budget) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(budget).items() if v is not None}


def slug(text: str) -> str:
    """A folder name for a row or dataset id (':' and other punctuation become '-')."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "row"


def merge(*maps: dict[str, Any] | None) -> dict[str, Any]:
    """Nested merge, later wins; lists and scalars are replaced."""
    out: dict[str, Any] = {}
    for m in maps:
        for key, value in (m or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _as_encoder(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return {"name": value} if isinstance(value, str) else dict(value)


def split_list(text: str) -> list[str]:
    """Split on commas outside brackets: ``cnn,cnn:channels=[8,16]`` -> two items."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    items.append(current.strip())
    return [i for i in items if i]


def parse_encoder_spec(text: str) -> dict[str, Any]:
    """``mamba:mixer=identity:d_state=8`` -> ``{"name": "mamba", "mixer": "identity", "d_state": 8}``."""
    from ..training.config import parse_set_value

    name, *options = text.split(":")
    spec: dict[str, Any] = {"name": name.strip()}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"encoder row {text!r}: options are key=value after the family, e.g. "
                              "mamba:mixer=identity or cnn:channels=[16,32,64]")
        spec[key.strip()] = parse_set_value(value.strip())
    return spec


def encoder_label(spec: dict[str, Any]) -> str:
    name = spec.get("name", "?")
    opts = [f"{k}={_short(v)}" for k, v in spec.items() if k != "name"]
    return ":".join([name, *opts])


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _task(arch: str) -> str | None:
    from ..registry import get_registry

    return get_registry().get("architecture", arch).metadata.get("task")


def takes_encoder(arch: str) -> bool:
    """Whether a registered architecture builds an encoder family (a reference network does not).

    Plugins say so in the registration metadata: ``encoder=False`` (also accepted:
    ``takes_encoder``/``needs_encoder``/``uses_encoder`` false, or ``encoder="none"``)."""
    from ..registry import get_registry

    meta = get_registry().get("architecture", arch).metadata
    for key in ("encoder", "takes_encoder", "needs_encoder", "uses_encoder"):
        if key in meta and (meta[key] is False or str(meta[key]).lower() in ("none", "false", "no")):
            return False
    return True


# -- parsing ----------------------------------------------------------------------------------
def load_study(path: str | Path | None = None, *, encoders: str | None = None, archs: str | None = None,
               data: str | None = None, seeds: int | None = None, budget: str | None = None,
               baseline: str | None = None, threads: int | None = None, match: float | None = None) -> Study:
    """A study from a YAML file and/or flags (flags override the file); every mistake is one line."""
    raw: dict[str, Any] = load_yaml(path) if path else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"study file {str(path)!r} must be a mapping (rows:, datasets:, seeds:, budget:)")
    _check_keys(raw, STUDY_KEYS, "the study file")
    raw = copy.deepcopy(raw)
    if path and "name" not in raw:
        raw["name"] = Path(path).stem
    if encoders:
        raw["encoders"] = split_list(encoders)
    if archs:
        raw["architectures"] = split_list(archs)
    if data:
        raw["datasets"] = split_list(data)
    if budget is not None:  # --budget: the same for every dataset
        raw["datasets"] = [({k: v for k, v in d.items() if k != "budget"} if isinstance(d, dict) else d)
                           for d in _as_list(raw.get("datasets"), "datasets")]
    for key, value in (("seeds", seeds), ("budget", budget), ("baseline", baseline), ("threads", threads)):
        if value is not None:
            raw[key] = value
    if match is not None:
        raw["match"] = {**(raw.get("match") or {}), "params": match}
    return study_from_dict(raw)


def study_from_dict(raw: dict[str, Any]) -> Study:
    rows = _grid_rows(raw) + [_row(r, i) for i, r in enumerate(raw.get("rows") or [])]
    if not rows:
        raise ConfigError("the study has no rows; give --encoders and --arch, or rows: in the study file")
    common_match = raw.get("match")
    for row in rows:
        if row.match is None and common_match:
            row.match = dict(common_match)
        if row.match:
            _check_match(row)
    ids = [r.id for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1} | {r.id for r in rows if [x.slug for x in rows].count(r.slug) > 1})
    if dup:
        raise ConfigError(f"two rows are called {dup[0]!r}; give them distinct name: values")
    datasets = [_dataset(d) for d in _as_list(raw.get("datasets"), "datasets")]
    if not datasets:
        raise ConfigError("the study has no datasets; give --data PRESET or datasets: in the study file "
                          "(see `flemme list datasets`)")
    dids = [d.id for d in datasets]
    if len(set(map(slug, dids))) != len(dids):
        raise ConfigError(f"two datasets share a name in {dids}; give them distinct name: values")
    for row in rows:
        for name in row.datasets or []:
            if name not in dids:
                raise ConfigError(unknown_name_message(f"dataset in row {row.id}'s datasets:", name, dids))
    set_needs(rows, raw, dids)
    baseline = raw.get("baseline") or rows[0].id
    for b in [baseline] + [r.baseline for r in rows if r.baseline]:
        if b not in ids:
            raise ConfigError(unknown_name_message("baseline row", str(b), ids))
    seeds = _seeds(raw.get("seeds", 1))
    bootstrap = raw.get("bootstrap", 10000)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 100:
        raise ConfigError(f"bootstrap must be a number of resamples >= 100, got {bootstrap!r}")
    threads = raw.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    for key in ("model", "data", "train"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ConfigError(f"the study's {key}: must be a mapping")
    study = Study(name=str(raw.get("name") or "study"), rows=rows, datasets=datasets, seeds=seeds,
                  budget=parse_budget(raw.get("budget")), baseline=baseline, metric=raw.get("metric"),
                  bootstrap=bootstrap, threads=threads, model=dict(raw.get("model") or {}),
                  data=dict(raw.get("data") or {}), train=dict(raw.get("train") or {}))
    for key in ("max_seconds", "seed", "output"):
        if key in study.train:
            raise ConfigError(f"the study's train.{key} is set per cell by flemme compare; use budget: / seeds: "
                              "/ -o instead")
    return study


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list, got {value!r}")
    return value


def _seeds(value: Any) -> list[int]:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                  for v in value) and len(set(value)) == len(value):
        return list(value)
    raise ConfigError(f"seeds must be a count >= 1 (e.g. 3: seeds 0, 1, 2) or a list of distinct seeds, got {value!r}")


def _grid_rows(raw: dict[str, Any]) -> list[Row]:
    encoders = [parse_encoder_spec(e) if isinstance(e, str) else dict(e)
                for e in _as_list(raw.get("encoders"), "encoders")]
    archs = _as_list(raw.get("architectures"), "architectures")
    if encoders and not archs:
        raise ConfigError("--encoders needs --arch (e.g. --arch unet), or rows: in the study file")
    rows: list[Row] = []
    for arch in archs:
        if not isinstance(arch, str):
            raise ConfigError(f"architectures: holds names, got {arch!r}")
        _check_name("architecture", arch)
        if not takes_encoder(arch):
            rows.append(Row(id=arch, arch=arch))
            continue
        if not encoders:
            raise ConfigError(f"architecture {arch!r} needs an encoder; give --encoders (see `flemme list encoders`)")
        for spec in encoders:
            _check_name("encoder", str(spec.get("name")))
            rows.append(Row(id=f"{encoder_label(spec)}+{arch}", arch=arch, encoder=spec))
    return rows


def _row(raw: Any, index: int) -> Row:
    if not isinstance(raw, dict):
        raise ConfigError(f"rows[{index}] must be a mapping like {{encoder: cnn, arch: unet}}, got {raw!r}")
    _check_keys(raw, ROW_KEYS, f"rows[{index}]")
    arch = raw.get("arch")
    if not isinstance(arch, str):
        raise ConfigError(f"rows[{index}] needs arch: NAME (see `flemme list architectures`)")
    _check_name("architecture", arch)
    encoder = raw.get("encoder")
    if isinstance(encoder, str):
        encoder = parse_encoder_spec(encoder)
    elif encoder is not None:
        if not isinstance(encoder, dict) or not isinstance(encoder.get("name"), str):
            raise ConfigError(f"rows[{index}].encoder must be a family name or a mapping with name:")
        encoder = dict(encoder)
    if encoder is None and takes_encoder(arch):
        raise ConfigError(f"rows[{index}]: architecture {arch!r} needs an encoder; add encoder: NAME "
                          "(see `flemme list encoders`)")
    if encoder is not None:
        if not takes_encoder(arch):
            raise ConfigError(f"rows[{index}]: architecture {arch!r} takes no encoder (a reference network); "
                              "remove encoder: from the row")
        _check_name("encoder", encoder["name"])
    label = raw.get("name") or (f"{encoder_label(encoder)}+{arch}" if encoder else arch)
    for key in ("arch_options", "model", "data", "train"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ConfigError(f"rows[{index}].{key} must be a mapping")
    datasets = raw.get("datasets")
    if datasets is not None:
        datasets = [str(d) for d in _as_list(datasets, f"rows[{index}].datasets")]
    return Row(id=str(label), arch=arch, encoder=encoder, arch_options=dict(raw.get("arch_options") or {}),
               model=dict(raw.get("model") or {}), data=dict(raw.get("data") or {}),
               train=dict(raw.get("train") or {}), match=raw.get("match"), baseline=raw.get("baseline"),
               datasets=datasets, variant=_variant(raw.get("variant"), index))


def _variant(value: Any, index: int) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"rows[{index}].variant must be the name of one of the model's evaluation variants "
                          f"(e.g. teacher), got {value!r}")
    return value


def _check_match(row: Row) -> None:
    if not isinstance(row.match, dict):
        raise ConfigError(f"row {row.id}: match must be like {{params: 2.0e6}}, got {row.match!r}")
    _check_keys(row.match, MATCH_KEYS, f"row {row.id}'s match")
    params = row.match.get("params")
    if isinstance(params, str):
        try:
            params = float(params)
        except ValueError:
            params = None
    if isinstance(params, bool) or not isinstance(params, (int, float)) or params <= 0:
        raise ConfigError(f"row {row.id}: match params must be a positive parameter count (e.g. 2.0e6), "
                          f"got {row.match.get('params')!r}")
    row.match["params"] = float(params)
    multiple = row.match.get("multiple", 8)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ConfigError(f"row {row.id}: match multiple must be a positive integer, got {multiple!r}")


def _dataset(raw: Any) -> DatasetSpec:
    from ..cli_train import data_source

    if isinstance(raw, str):
        source = data_source(raw)
        if "preset" in source:
            _check_name("dataset", raw)
        return DatasetSpec(id=raw.rsplit("/", 1)[-1].removesuffix(".json"), data=source)
    if not isinstance(raw, dict):
        raise ConfigError(f"datasets: holds preset names or mappings, got {raw!r}")
    raw = dict(raw)
    sections = {k: raw.pop(k) for k in DATASET_SECTION_KEYS if k in raw}
    if "preset" in raw:
        _check_name("dataset", str(raw["preset"]))
    name = sections.get("name") or raw.get("preset") or raw.get("datalist") or raw.get("images")
    if not name:
        raise ConfigError(f"dataset {raw!r} needs preset:, datalist: or images:/labels: (and a name:)")
    for key in ("model", "train"):
        if not isinstance(sections.get(key) or {}, dict):
            raise ConfigError(f"dataset {name}: {key}: must be a mapping")
    budget = parse_budget(sections["budget"]) if sections.get("budget") else None
    return DatasetSpec(id=str(name), data=raw, model=dict(sections.get("model") or {}),
                       train=dict(sections.get("train") or {}), budget=budget)


def _check_name(kind: str, name: str) -> None:
    from ..registry import get_registry

    try:
        get_registry().get(kind, name)
    except FlemmeError as exc:
        raise ConfigError(str(exc)) from None
