"""The ``train:`` section of a run config, and the whole run config (model + data + train).

Plain dataclasses, no torch: ``flemme train --help`` and config errors stay fast.
Unknown keys are errors with close matches, like every other flemme config.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import _check_keys, _int_list, as_mapping, load_yaml
from ..errors import ConfigError, unknown_name_message
from ..overrides import parse_set_value  # noqa: F401 - the one --set value parser, imported from here too

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant", "poly")
AMP_MODES = ("auto", "none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
STAGE_KEYS = ("steps", "lr", "weight_decay", "warmup", "schedule", "min_lr", "optimizer")
TOP_KEYS = ("model", "data", "train")


@dataclasses.dataclass
class TrainConfig:
    """How to train: optimisation, schedule, validation, checkpoints, hardware.

    Batch size, patch size and workers belong to the ``data:`` section (the data layer
    builds the batches); ``data.batch_size`` is the global batch, split across processes.
    """

    steps: int = 1000               # optimiser steps (over all stages when ``stages`` is empty)
    max_seconds: float | None = None  # wall-clock budget of the training steps (over all stages, shared
                                    # by their steps); the schedule runs on max(step, time) progress
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"        # adamw | adam | sgd
    momentum: float = 0.9           # sgd only
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    warmup: float = 0.0             # warm-up steps; a value < 1 is a fraction of the stage's steps
    schedule: str = "constant"      # constant | cosine | linear | poly. Constant by default: in the
                                    # short runs of a CPU budget (300-1,100 steps) cosine lost 1.3-7
                                    # Dice points to it in every paired run (README, "The demo")
    min_lr: float = 0.0             # learning rate at the end of a decaying schedule
    clip: float | None = 1.0        # max gradient norm; null disables clipping
    amp: str = "auto"               # auto (fp16/bf16 on CUDA, none on CPU) | none | bf16 | fp16
    seed: int = 0
    deterministic: bool = True      # deterministic kernels (bit-exact resume on CPU)
    device: str = "auto"            # auto | cpu | cuda
    threads: int | None = None      # torch intra-op threads (None: torch's default)
    val_every: int = 200            # validate every N steps (0: only at the end)
    save_every: int | None = None   # write `last` every N steps (default: val_every)
    log_every: int = 10             # append a metrics row every N steps
    roi_size: list[int] | None = None  # sliding-window size (default: model.image_size)
    sw_batch_size: int = 4
    overlap: float = 0.25
    sw_mode: str = "gaussian"       # constant | gaussian blending of windows
    metrics: list[str] | None = None   # validation metrics (default: the task's)
    monitor: str | None = None      # metric that picks `best` (default: dice / psnr / first)
    monitor_mode: str = "max"       # max | min
    stages: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    output: str | None = None       # run folder (default: runs/<config name>)
    tensorboard: bool = False
    progress: bool = True
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters get no gradient
    keep_state: bool = False        # keep the resume tensors (state-*.safetensors, ~3x the model) after the run ends

    def stage_settings(self, name: str) -> dict[str, Any]:
        """Per-stage values (steps, lr, ...) with the global ones as defaults."""
        base = {k: getattr(self, k) for k in STAGE_KEYS}
        return {**base, **self.stages.get(name, {})}


TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]


def plan_stage_steps(cfg: TrainConfig, names: list[str], total: int | None = None) -> tuple[list[int], str]:
    """Steps of each stage, and a note when they were rescaled.

    A config file's stages keep their own ``steps`` (a stage without one takes
    ``train.steps``). ``total`` (``--steps N`` on the command line) is the run's total: the
    stages are scaled proportionally to sum to exactly N (largest remainders, at least one
    step each), so a flag never leaves a staged run at its file's length.
    """
    steps = [int(cfg.stage_settings(name)["steps"]) for name in names]
    if total is None or len(names) < 2 or sum(steps) == total:
        return steps, ""
    if total < len(names):
        raise ConfigError(f"--steps {total} is fewer than the {len(names)} stages ({', '.join(names)}); give at "
                          f"least {len(names)}, or set each stage with --set train.stages.NAME.steps=N")
    before = sum(steps)
    exact = [total * s / before for s in steps]
    scaled = [max(1, int(e)) for e in exact]
    order = sorted(range(len(steps)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    i = 0
    while sum(scaled) != total:
        k = order[i % len(order)]
        if sum(scaled) < total:
            scaled[k] += 1
        elif scaled[k] > 1:
            scaled[k] -= 1
        i += 1
    note = (f"--steps {total} is the total over the {len(names)} stages, scaled from "
            + " + ".join(f"{n} {s}" for n, s in zip(names, steps)) + ": "
            + ", ".join(f"{n} {s}" for n, s in zip(names, scaled)) + " (config.yaml records these)")
    return scaled, note


def _positive_int(value: Any, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ConfigError(f"{where} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return value


def _number(value: Any, where: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ConfigError(f"{where} must be a number >= {low}, got {value!r}")
    return float(value)


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ConfigError(unknown_name_message(f"value for {where}:", str(value), choices))
    return value


def train_config_from_dict(data: Mapping[str, Any] | None) -> TrainConfig:
    """Validate a ``train:`` mapping; every mistake is one line naming the key."""
    data = dict(data or {})
    _check_keys(data, TRAIN_KEYS, "train")
    cfg = TrainConfig(**data)
    for key in ("steps", "sw_batch_size", "log_every"):
        _positive_int(getattr(cfg, key), f"train.{key}")
    for key in ("val_every", "seed"):
        _positive_int(getattr(cfg, key), f"train.{key}", allow_zero=True)
    if cfg.save_every is not None:
        _positive_int(cfg.save_every, "train.save_every")
    if cfg.threads is not None:
        _positive_int(cfg.threads, "train.threads")
    if cfg.max_seconds is not None:
        cfg.max_seconds = _number(cfg.max_seconds, "train.max_seconds")
        if cfg.max_seconds <= 0:
            raise ConfigError(f"train.max_seconds must be positive, got {cfg.max_seconds!r}")
    for key in ("lr", "weight_decay", "min_lr", "momentum", "warmup"):
        setattr(cfg, key, _number(getattr(cfg, key), f"train.{key}"))
    if cfg.clip is not None:
        cfg.clip = _number(cfg.clip, "train.clip")
        cfg.clip = cfg.clip or None
    cfg.overlap = _number(cfg.overlap, "train.overlap")
    if not 0.0 <= cfg.overlap < 1.0:
        raise ConfigError(f"train.overlap must be in [0, 1), got {cfg.overlap!r}")
    if not (isinstance(cfg.betas, (list, tuple)) and len(cfg.betas) == 2):
        raise ConfigError(f"train.betas must be two numbers like [0.9, 0.999], got {cfg.betas!r}")
    cfg.betas = [_number(b, "train.betas") for b in cfg.betas]
    _choice(cfg.optimizer, OPTIMIZERS, "train.optimizer")
    _choice(cfg.schedule, SCHEDULES, "train.schedule")
    _choice(cfg.amp, AMP_MODES, "train.amp")
    _choice(cfg.device, DEVICES, "train.device")
    _choice(cfg.sw_mode, ("constant", "gaussian"), "train.sw_mode")
    _choice(cfg.monitor_mode, ("max", "min"), "train.monitor_mode")
    for key in ("deterministic", "tensorboard", "progress", "find_unused_parameters", "keep_state"):
        if not isinstance(getattr(cfg, key), bool):
            raise ConfigError(f"train.{key} must be true or false, got {getattr(cfg, key)!r}")
    if cfg.roi_size is not None:
        cfg.roi_size = _int_list(cfg.roi_size, "train.roi_size")
    if cfg.metrics is not None:
        metrics = [cfg.metrics] if isinstance(cfg.metrics, str) else cfg.metrics
        if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
            raise ConfigError(f"train.metrics must be a metric name or a list of names, got {cfg.metrics!r:.40}")
        cfg.metrics = list(metrics)
    if not isinstance(cfg.stages, Mapping):
        raise ConfigError("train.stages must map stage names to {steps: N, lr: ...}")
    stages = {}
    for name, spec in cfg.stages.items():
        spec = dict(spec or {})
        _check_keys(spec, list(STAGE_KEYS), f"train.stages.{name}")
        if "steps" in spec:
            _positive_int(spec["steps"], f"train.stages.{name}.steps")
        for key in ("lr", "weight_decay", "min_lr", "warmup"):
            if key in spec:
                spec[key] = _number(spec[key], f"train.stages.{name}.{key}")
        if "schedule" in spec:
            _choice(spec["schedule"], SCHEDULES, f"train.stages.{name}.schedule")
        if "optimizer" in spec:
            _choice(spec["optimizer"], OPTIMIZERS, f"train.stages.{name}.optimizer")
        stages[str(name)] = spec
    cfg.stages = stages
    return cfg


@dataclasses.dataclass
class RunConfig:
    """A whole run: the raw ``model:`` and ``data:`` mappings and the parsed ``train:``.

    ``model`` and ``data`` stay mappings here (validated by their own parsers when the
    run starts) so that the run folder stores exactly what the user wrote, resolved.
    """

    model: dict[str, Any]
    data: dict[str, Any]
    train: TrainConfig
    name: str = "run"
    #: ``train.steps`` came from the command line (``--steps``/``--set``): it is the total over
    #: the stages, which the trainer scales to it (a config file's per-stage steps stay as written).
    steps_from_cli: bool = False
    #: what the command-line changes dropped or rescaled, for the CLI to say (:mod:`flemme_core.overrides`).
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": copy.deepcopy(self.model), "data": copy.deepcopy(self.data),
                "train": dataclasses.asdict(self.train)}

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output or Path("runs") / self.name)


def run_config_from_dict(data: Mapping[str, Any], name: str = "run") -> RunConfig:
    """Split and validate a whole config mapping (``model:``, ``data:``, ``train:``)."""
    _check_keys(data, list(TOP_KEYS), "the config file (top level)")
    model = as_mapping(data.get("model") or {}, "model:")
    dataset = as_mapping(data.get("data") or {}, "data:")
    return RunConfig(model=copy.deepcopy(model), data=copy.deepcopy(dataset),
                     train=train_config_from_dict(as_mapping(data.get("train") or {}, "train:")), name=name)


#: the data keys that say where the data comes from; ``--data`` replaces all of them.
SOURCE_KEYS = ("preset", "datalist", "images", "labels", "options", "base_dir", "num_classes")


def load_run_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None,
                    sets: tuple[str, ...] | list[str] = (), data_source: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML file (or start empty), replace its data source by ``data_source`` (``--data``),
    then apply dotted overrides and ``--set a.b=c`` items, in that order: a ``--set data.*``
    key given with ``--data`` is kept.

    ``overrides`` keys are dotted paths from the top (``model.arch``, ``train.steps``);
    ``--set`` paths may omit ``model.`` for model keys (``encoder.block=res_conv``).
    """
    data: dict[str, Any] = {}
    name = "run"
    if path is not None:
        data = load_yaml(path)
        name = Path(path).stem
    data = copy.deepcopy(data)
    for section in TOP_KEYS:  # before any override is applied into them: wrong types are one line
        if data.get(section) is not None:
            data[section] = as_mapping(data[section], f"{section}:")
    if data_source:
        section = data["data"] = dict(data.get("data") or {})
        for key in SOURCE_KEYS:
            section.pop(key, None)
        section.update(data_source)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("encoder"), str):
        model["encoder"] = {"name": model["encoder"]}  # so that encoder.* overrides can be applied
    from ..overrides import apply_override, parse_set

    notes: list[str] = []
    changed = set()
    for key, value in (overrides or {}).items():
        if value is not None:
            apply_override(data, key, value, notes, model_prefix="model.")
            changed.add(key)
    for item in sets:
        key, value = parse_set(item, "train.lr=3e-4")
        if key.split(".")[0] not in TOP_KEYS:
            key = f"model.{key}"
        apply_override(data, key, value, notes, model_prefix="model.")
        changed.add(key)
    run = run_config_from_dict(data, name=name)
    run.steps_from_cli, run.notes = "train.steps" in changed, notes
    return run
