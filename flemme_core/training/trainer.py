"""The training loop: any registered architecture with any encoder, through the contract.

The loop knows nothing about families or architectures. It calls
``model.training_stages()`` / ``begin_stage(name)`` (an optimiser over the parameters
that require gradients is rebuilt per stage), ``model.training_loss(batch, criterion)``
for the loss, and the evaluator (``predict``, or ``validation_metrics`` when the
architecture has its own). Data order and augmentation are functions of (seed,
position) (:mod:`.sampling`), and the state is committed atomically (:mod:`.state`),
so a run killed at any instant and resumed ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FlemmeError, unknown_name_message
from . import setup as S
from .config import RunConfig, plan_stage_steps
from .distributed import DistContext, all_reduce_sum, any_flag, barrier, init_distributed, shutdown
from .evaluation import EvalSettings, autocast, evaluate
from .logs import MetricsLog, Progress, tensorboard_writer
from .metrics import distance_units
from .optim import Schedule, build_optimizer
from .outputs import write_outputs
from .sampling import SeededDataset, StepBatchSampler, StreamOrder, make_train_loader
from .state import (
    load_model_tensors,
    read_train_state,
    restore_rng,
    save_train_state,
    unflatten_optimizer,
)


class TrainingError(FlemmeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""

    exit_code = 3


class _LossForward(nn.Module):
    """Routes DDP's forward to the architecture's ``training_loss`` (so gradients sync)."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model.training_loss(batch, self.criterion)


class Trainer:
    """Builds data, model, loss and run folder from a :class:`RunConfig`, then :meth:`fit`."""

    def __init__(self, run: RunConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False):
        from ..build import build_model, loss_spec
        from ..data import build_datasets
        from ..losses import build_loss

        self.created = time.perf_counter()
        self.run, self.cfg = run, run.train
        cfg = self.cfg
        self.device = S.pick_device(cfg.device)
        self.ctx: DistContext = init_distributed(self.device.type)
        self.quiet = quiet or not self.ctx.is_main
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        S.seed_everything(cfg.seed, cfg.deterministic, self.device)
        self.amp = S.amp_dtype(cfg.amp, self.device)
        self.train_ds, self.val_ds, self.info = build_datasets(run.data, seed=cfg.seed)
        model_dict = S.complete_model_config(run.model, self.info)
        self.resolved = S.resolved_config(run, model_dict)
        self.run_dir = run.output_dir
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = self._sync_batchnorm(build_model(model_dict)).to(self.device)
        from ..tasks import task_of

        self.task = task_of(self.model)  # metrics, monitor, prediction: the task object, never its name
        self.metric_names = self.task.check_metric_names(cfg.metrics)
        self.task.check_metric_requirements(self.metric_names)
        self.monitor, self.higher = self._monitor()
        mc = self.model.config
        self.criterion = build_loss(loss_spec(self.model), mc.out_channels, mc.dims).to(self.device)
        self.stages = self._stage_plan()
        self.total_steps = sum(s["steps"] for s in self.stages)
        self.batch = self._global_batch()
        self._claim_run_dir(resume, overwrite)
        self.has_state = resume and (self.run_dir / "state.json").exists()
        roi = list(cfg.roi_size or mc.image_size)
        self.eval_settings = EvalSettings(
            task=self.task, metrics=self.metric_names, roi_size=roi, sw_batch_size=cfg.sw_batch_size,
            overlap=cfg.overlap, sw_mode=cfg.sw_mode, num_classes=max(mc.out_channels, 2),
            class_names=list(self.info.class_names), spacing=self.info.spacing or None, amp_dtype=self.amp,
            device=self.device)
        self.best: dict[str, Any] = {"score": None, "step": None, "metric": self.monitor}
        self.example: dict[str, Any] | None = None
        self.last_val: dict[str, float] = {}
        self.stage_index = 0  # the stage being trained (only the final stage's validations compete for best)
        self.step = 0
        self.step_seconds: list[float] = []  # wall time of each step (data + forward + backward + update)
        self.train_seconds = 0.0  # sum of the step times (what train.max_seconds budgets), kept over resumes
        self.steps_trained = 0  # optimiser updates made (fewer than the steps when max_seconds cut a stage)
        self.stopped_by = "steps"
        self.cut_at: int | None = None  # the last step trained when max_seconds ended a stage (self.step jumps to its end)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None

    def _claim_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Take the run-folder lock (main process) and only then write into the folder.

        Nothing is written before every check has passed: a refused run leaves the folder
        as it was (a folder the lock created is removed again). The lock is held until
        :meth:`fit` returns or raises (:meth:`release`).
        """
        from .runfolder import RunLock

        error: BaseException | None = None
        self._lock: RunLock | None = None
        if self.cfg.tensorboard:
            tensorboard_writer()  # a missing package is refused before anything is written
        if self.ctx.is_main:
            lock = RunLock(self.run_dir)
            missing = not self.run_dir.exists()  # before the lock creates it: --resume into a typo is refused
            try:
                self._lock = lock.acquire()
                if resume and missing:
                    raise ConfigError(f"--resume: the run folder {str(self.run_dir)!r} does not exist; check "
                                      "--output, or start a new run without --resume")
                S.prepare_run_dir(self.run_dir, self.resolved, resume, overwrite, apply=True)
                self.log = MetricsLog(self.run_dir, True, self.cfg.tensorboard)
                S.write_config(self.run_dir, self.resolved)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = exc
                self.release()
        else:
            self.log = MetricsLog(self.run_dir, False, False)
        if any_flag(error is not None, self.ctx):
            if error is not None:
                raise error
            raise SystemExit(2)  # rank 0 reports the error
        barrier(self.ctx)

    def release(self) -> None:
        """Release the run-folder lock (idempotent)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def _sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """Several CUDA processes: BatchNorm -> SyncBatchNorm (same parameters, same checkpoint keys).

        torch's SyncBatchNorm needs CUDA; with several CPU processes BatchNorm uses each
        process's batch statistics (running stats follow rank 0), so the run is then not
        equivalent to one process -- instance or group norm are.
        """
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if not (self.ctx.enabled and has_bn):
            return model
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.ctx.is_main and not self.quiet:
            print("note: BatchNorm with several CPU processes uses per-process batch statistics (SyncBatchNorm "
                  "needs CUDA); use norm instance or group for results equal to one process", file=sys.stderr, flush=True)
        return model

    # -- planning -------------------------------------------------------------------------
    def _monitor(self) -> tuple[str, bool]:
        cfg = self.cfg
        name = cfg.monitor or self.task.monitor
        # a metric of the task has a known direction; any other follows train.monitor_mode
        return name, self.task.higher_is_better(name, cfg.monitor_mode == "max")

    def _stage_plan(self) -> list[dict[str, Any]]:
        names = list(self.model.training_stages())
        for name in self.cfg.stages:
            if name not in names:
                raise ConfigError(unknown_name_message(f"stage in train.stages for {self.model.config.arch}:",
                                                       name, names))
        total = self.cfg.steps if getattr(self.run, "steps_from_cli", False) else None
        counts, note = plan_stage_steps(self.cfg, names, total)
        if note and not self.quiet:
            print(f"note: {note}", file=sys.stderr, flush=True)
        plan, start = [], 0
        for name, steps in zip(names, counts):
            settings = {**self.cfg.stage_settings(name), "steps": steps}
            plan.append({**settings, "name": name, "start": start, "end": start + steps})
            start += steps
        if len(names) > 1:  # config.yaml states every stage's steps and their total: what actually runs
            stages = self.resolved["train"].setdefault("stages", {})
            for name, steps in zip(names, counts):
                stages[name] = {**stages.get(name, {}), "steps": steps}
            self.resolved["train"]["steps"] = start
        return plan

    def _global_batch(self) -> int:
        from ..data import data_config_from_dict

        batch = data_config_from_dict(self.run.data).batch_size
        if batch % self.ctx.world_size:
            raise ConfigError(f"data.batch_size {batch} must be divisible by the {self.ctx.world_size} processes; "
                              f"use a multiple of {self.ctx.world_size}")
        return batch

    # -- checkpoints ----------------------------------------------------------------------
    def _extra(self) -> dict[str, Any]:
        info = self.info
        return {"step": self.step, "seed": self.cfg.seed, "task": self.task.name, "num_classes": info.num_classes,
                "class_names": list(info.class_names), "roi_size": self.eval_settings.roi_size,
                "spacing": list(info.spacing or ()), "held_out": info.held_out_description,
                "data": self.run.data, "preprocessing": list(info.preprocessing),
                "sw": {"sw_batch_size": self.cfg.sw_batch_size, "overlap": self.cfg.overlap,
                       "mode": self.cfg.sw_mode},
                "metrics": self.last_val}

    def _save(self, stage_index: int, optimizer: torch.optim.Optimizer) -> None:
        if not self.ctx.is_main:
            return
        from ..checkpoint import save_model

        # the data position is a function of the step: stream positions [0, step * global batch) are consumed
        info = {"step": self.step, "stage": stage_index, "best": self.best, "finished": self.step >= self.total_steps,
                "data_position": self.step * self.batch, "seed": self.cfg.seed,
                "scaler": self.scaler.state_dict() if self.scaler else None, "world_size": self.ctx.world_size,
                "train_seconds": self.train_seconds, "steps_trained": self.steps_trained,
                "stopped_by": self.stopped_by}
        from ..errors import OutputError
        from .stops import deferred_stops, resume_command

        try:
            with deferred_stops():  # a stop (Ctrl-C, SIGTERM) lands after the commit, never inside it
                save_train_state(self.run_dir, self.model, optimizer, info,
                                 lambda: save_model(self.model, self.run_dir / "last.safetensors", extra=self._extra()))
        except OutputError as exc:  # full disk, read-only: the previous state is intact and resumable
            raise OutputError(f"checkpoint at step {self.step} not written: {exc}; the last committed state is intact: "
                              f"fix that, then continue with: {resume_command()}") from None

    def _validate(self) -> dict[str, float]:
        metrics, extras = evaluate(self.model, self.val_ds, self.eval_settings, self.ctx)
        self.last_val = metrics
        if "example" in extras:
            self.example = extras["example"]
        score = metrics.get(self.monitor)
        # Earlier stages train parts the final model depends on (a distillation teacher): the model the
        # checkpoint deploys is only complete in the final stage, so only its validations make best.safetensors.
        final_stage = self.stage_index == len(self.stages) - 1
        if final_stage and score is not None and math.isfinite(score):
            best = self.best["score"]
            if best is None or (score > best if self.higher else score < best):
                self.best = {"score": score, "step": self._trained_step(), "metric": self.monitor}
                if self.ctx.is_main:
                    from ..checkpoint import save_model

                    save_model(self.model, self.run_dir / "best.safetensors", extra=self._extra())
        self.log.write({"step": self._trained_step(), "split": "val", "stage": self.stages[self.stage_index]["name"],
                        **metrics})
        return metrics

    def _trained_step(self) -> int:
        """The step a validation follows, for the log and `best`: the schedule position jumps to the
        stage's end when train.max_seconds cuts it, but the curves must show where training stopped."""
        return self.cut_at if self.cut_at is not None else self.step

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train all stages from step 0 or from the committed state; returns the summary."""
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> dict[str, Any]:
        record, tensors = (read_train_state(self.run_dir) if self.has_state else (None, None))
        if record is not None:
            self.step, self.best = int(record["step"]), record["best"]
            self.train_seconds = float(record.get("train_seconds", 0.0))
            self.steps_trained = int(record.get("steps_trained", self.step))
            self.stopped_by = record.get("stopped_by", "steps")
            self.log.truncate(self.step)
            if record.get("scaler") and self.scaler:
                self.scaler.load_state_dict(record["scaler"])
        progress = Progress(self.total_steps, self.step, self.cfg.progress, self.quiet)
        mc = self.model.config
        with_encoder = f"with encoder {mc.encoder.name}" if mc.encoder is not None else "(no encoder)"
        progress.message(f"training {mc.arch} {with_encoder} on {self.info.name} "
                         f"({self.info.num_train} train / {self.info.num_held_out} held-out items): "
                         f"{self.total_steps} steps, batch {self.batch}, {self.ctx.world_size} process(es) on "
                         f"{self.device.type}; run folder {self.run_dir}")
        for note in self.info.notes:  # how the data was read (4D images, paths outside the dataset folder)
            progress.message(f"note: {note}")
        if record is not None:
            progress.message(f"resuming {self.run_dir} at step {self.step}/{self.total_steps}")
        order = StreamOrder(len(self.train_ds), self.cfg.seed)
        dataset = SeededDataset(self.train_ds)
        started = time.perf_counter()
        optimizer = None
        try:
            for index, stage in enumerate(self.stages):
                if self.step >= stage["end"]:
                    continue
                mid_stage = record is not None and self.step > stage["start"]
                if record is not None and not mid_stage:  # state from the end of the previous stage
                    load_model_tensors(self.model, tensors)
                    restore_rng(tensors, record["rng"])
                self.model.begin_stage(stage["name"])
                if mid_stage:  # begin_stage may touch weights or RNG: the saved ones win
                    load_model_tensors(self.model, tensors)
                    restore_rng(tensors, record["rng"])
                params = [p for p in self.model.parameters() if p.requires_grad]
                optimizer = build_optimizer(params, stage, self.cfg.betas, self.cfg.momentum)
                if mid_stage:
                    unflatten_optimizer(optimizer, tensors, record["optimizer"])
                record = tensors = None
                self._run_stage(index, stage, optimizer, params, order, dataset, progress)
            if optimizer is None:  # resumed a finished run
                progress.message(f"{self.run_dir} already finished ({self.total_steps} steps)")
            else:
                self._validate()
                self._save(len(self.stages) - 1, optimizer)
        finally:
            progress.close()
            self.log.close()
        summary = self._summary(time.perf_counter() - started)
        if self.ctx.is_main:
            self._write_outputs(summary)
        barrier(self.ctx)
        shutdown(self.ctx)
        return summary

    def _run_stage(self, index: int, stage: dict[str, Any], optimizer: torch.optim.Optimizer,
                   params: list[nn.Parameter], order: StreamOrder, dataset: SeededDataset,
                   progress: Progress) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.stage_index = index
        self.cut_at = None  # this stage trains on; set again if max_seconds cuts it
        schedule = Schedule(optimizer, stage)
        forward = self._forward(stage)
        sampler = StepBatchSampler(order, self.batch, self.step, stage["end"], ctx.rank, ctx.world_size)
        loader = make_train_loader(dataset, sampler, self._num_workers(), pin_memory=self.device.type == "cuda")
        save_every = cfg.save_every or cfg.val_every or stage["end"]
        sums: dict[str, float] = {}
        count = 0
        self.model.train()
        self._tick = time.perf_counter()
        for batch in loader:
            position = self._position(stage)
            if position >= stage["steps"]:  # train.max_seconds: this stage's share of the time is spent
                self.cut_at = self.step
                self.step, self.stopped_by = stage["end"], "seconds"
                break
            lr = schedule.apply(position)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast(self.device, self.amp):
                loss, logs = forward(batch)
            value = float(loss.detach())
            if any_flag(not math.isfinite(value), ctx):
                raise TrainingError(self._nonfinite_message(value))
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            if cfg.clip:
                if self.scaler:
                    self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            if self.scaler:
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.steps_trained += 1
            self.step_seconds.append(time.perf_counter() - self._tick)
            self.train_seconds += self.step_seconds[-1]
            terms = {"loss": value, **{k: float(v) for k, v in (logs or {}).items()},
                     **getattr(self.criterion, "last", {})}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if self.step % cfg.log_every == 0 or self.step == stage["end"]:
                means = self._mean_over_ranks(sums, count)
                row = {"step": self.step, "split": "train", "stage": stage["name"], "lr": lr, **means}
                self.log.write(row)
                sums, count = {}, 0
            validate = cfg.val_every and self.step % cfg.val_every == 0 and self.step < self.total_steps
            if validate:
                metrics = self._validate()
                shown = {k: v for k, v in metrics.items() if "/" not in k}
                tag = f" [{stage['name']}]" if len(self.stages) > 1 else ""
                progress.message(f"step {self.step}/{self.total_steps}{tag}  train loss {value:.4f}  |  held-out " +
                                 "  ".join(f"{k} {v:.4f}" for k, v in shown.items()) + f"  |  eta {progress.eta(self.step)}")
            if (self.step % save_every == 0 or self.step == stage["end"]) and self.step < self.total_steps:
                self._save(index, optimizer)
            postfix = {"loss": value, "lr": lr}
            if self.monitor in self.last_val:
                postfix[f"held-out {self.monitor}"] = self.last_val[self.monitor]
            progress.update(self.step, postfix)
            self._tick = time.perf_counter()  # validation and checkpoints are not step time

    def _position(self, stage: dict[str, Any]) -> float:
        """Progress through the stage in steps: the step, or with ``train.max_seconds`` the larger of
        the step and the time spent (stage ``i`` owns the budget's window ``[T_{i-1}, T_i)`` with
        ``T_i = max_seconds * end_i / total``; time a stage leaves unused passes to the next), so the
        warm-up and decay of the schedule follow whichever budget binds."""
        steps = self.step - stage["start"]
        budget = self.cfg.max_seconds
        if not budget:
            return steps
        spent = self.train_seconds
        if self.ctx.enabled:  # every rank must agree (same lr, same stopping step)
            spent = float(all_reduce_sum(torch.tensor([spent], dtype=torch.float64), self.ctx)[0]) / self.ctx.world_size
        t0, t1 = (budget * stage[k] / self.total_steps for k in ("start", "end"))
        return max(float(steps), (spent - t0) / max(t1 - t0, 1e-9) * stage["steps"])

    def _mean_over_ranks(self, sums: dict[str, float], count: int) -> dict[str, float]:
        """Interval means of the logged terms, averaged over processes (same keys on every rank)."""
        keys = sorted(sums)
        flat = all_reduce_sum(torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64),
                              self.ctx)
        return {k: float(flat[i] / flat[-1]) for i, k in enumerate(keys)}

    def _num_workers(self) -> int:
        from ..data import data_config_from_dict

        return data_config_from_dict(self.run.data).num_workers

    def _forward(self, stage: dict[str, Any]):
        if not self.ctx.enabled:
            return lambda batch: self.model.training_loss(batch, self.criterion)
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DDP(_LossForward(self.model, self.criterion), device_ids=ids,
                      find_unused_parameters=self.cfg.find_unused_parameters)
        return wrapped

    def _nonfinite_message(self, value: float) -> str:
        last = self.run_dir / "last.safetensors"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        return (f"the loss became non-finite ({value}) at step {self.step + 1}; training stopped and {kept}; "
                "lower train.lr, keep train.clip on, or check the data for NaNs")

    # -- outputs ----------------------------------------------------------------------------
    def _summary(self, seconds: float) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "steps": self.step, "task": self.task.name, "monitor": self.monitor,
                "best": self.best, "final": self.last_val, "seconds": seconds,
                "seconds_per_step": _median(self.step_seconds[3:] or self.step_seconds),
                "steps_trained": self.steps_trained, "train_seconds": self.train_seconds,
                "stopped_by": self.stopped_by, "max_seconds": self.cfg.max_seconds,
                "peak_memory_mb": S.peak_memory_mb(self.device),
                "held_out": self.info.held_out_description, "data": self.info.name,
                "world_size": self.ctx.world_size, "parameters": sum(p.numel() for p in self.model.parameters()),
                "wall_seconds": time.perf_counter() - self.created, "hd95_units": distance_units(self.info.spacing),
                "timing": {"wall_seconds": "the whole command from start-up: data loading, model build, training, "
                                           "validation, checkpoints",
                           "seconds": "the training loop: steps plus validations and checkpoints",
                           "train_seconds": "the sum of the training steps alone",
                           "seconds_per_step": "median of one training step: data + forward + backward + update "
                                               "(no validation or checkpoint)"}}

    def _write_outputs(self, summary: dict[str, Any]) -> None:
        finished = self.step >= self.total_steps and not self.cfg.keep_state
        write_outputs(self.run_dir, summary, prune=finished, info=self.info, task=self.task, example=self.example,
                      step=self.step)


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def train(run: RunConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train a run config; returns the summary (also written to ``<run>/summary.json``)."""
    return Trainer(run, resume=resume, overwrite=overwrite, quiet=quiet).fit()  # fit releases the lock
