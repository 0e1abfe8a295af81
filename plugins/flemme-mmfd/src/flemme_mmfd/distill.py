"""The ``distill`` architecture: MMFD's two training stages as one model.

* ``model.encoder`` is the **student** encoder (any registered family): what is deployed.
* ``arch_options.teacher`` is the teacher's encoder config (typically ``mmfd``), or
  ``teacher_checkpoint`` a trained teacher saved by flemme, or a distill run's checkpoint
  whose teacher is taken (then stage 1 is skipped).
  ``teacher_init: <branch id>`` starts the teacher's decoder and head from that branch's
  checkpoint (with the fusion's ``residual`` on it, the teacher starts as that model).
* Teacher and student are both the ``inner`` architecture (``unet`` by default; ``ae``,
  ``hunet``, any registered one) around their encoders.

Stage ``teacher`` trains the teacher with its own task loss (frozen branches stay frozen:
only LoRA, alignment, fusion, decoder and head learn). Stage ``student`` freezes the
teacher (eval mode, no gradients, run under ``no_grad``) and trains the student on
``task_weight · task + feature_weight · MSE(project(student features), teacher features)
+ logit_weight · T² · KL(teacher/T ‖ student/T)``. Feature pairs match each distilled
teacher level with the student level of nearest stride; a learned 1×1 projector bridges
different widths and the student map is resampled to the teacher's grid.

``forward``/``predict`` always run the student (what is deployed, and what the trainer's
validation and ``best`` checkpoint follow); the teacher is ``model.teacher``, an ordinary
architecture that can be evaluated or saved on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flemme_core import layers
from flemme_core.architectures.base import Architecture, Batch, BuildEncoder
from flemme_core.config import ModelConfig, encoder_config_from_dict
from flemme_core.errors import ConfigError

from .align import resample

STAGES = ("teacher", "student")


@dataclasses.dataclass
class DistillOptions:
    teacher: Any = None                 # the teacher's encoder config, e.g. {name: mmfd, branches: [...]}
    teacher_checkpoint: str | None = None  # a trained teacher (flemme checkpoint): skips stage 1
    teacher_init: str | None = None     # a teacher branch id: decoder and head start from its checkpoint
    inner: str = "unet"                 # architecture of teacher and student
    inner_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages: list[str] | None = None     # default: [teacher, student] ([student] with teacher_checkpoint)
    task_weight: float = 1.0
    feature_weight: float = 10.0        # MMFD uses 10
    logit_weight: float = 0.0           # MMFD uses none
    temperature: float = 2.0
    feature_levels: Any = "all"         # teacher levels to distil: all | last | [indices]
    projector: str = "auto"             # auto (1×1 conv only when widths differ) | always

    def validate(self) -> None:
        if (self.teacher is None) == (self.teacher_checkpoint is None):
            raise ConfigError("model.arch_options needs exactly one of teacher (an encoder config, e.g. "
                              "{name: mmfd, branches: [...]}) or teacher_checkpoint (a trained teacher)")
        if self.teacher_init is not None and self.teacher is None:
            raise ConfigError("model.arch_options.teacher_init seeds a teacher built here; with teacher_checkpoint "
                              "the teacher is already trained: drop teacher_init")
        if self.inner == "distill":
            raise ConfigError("model.arch_options.inner cannot be distill; use unet, ae, hunet, ...")
        if self.stages is not None:
            if isinstance(self.stages, str):
                self.stages = [self.stages]
            bad = [s for s in self.stages if s not in STAGES]
            if bad or not self.stages or list(self.stages) != sorted(self.stages, key=STAGES.index):
                raise ConfigError(f"model.arch_options.stages must be teacher and/or student in that order, "
                                  f"got {self.stages!r}")
        for key in ("task_weight", "feature_weight", "logit_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.arch_options.{key} must be >= 0, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise ConfigError(f"model.arch_options.temperature must be > 0, got {self.temperature}")
        if self.projector not in ("auto", "always"):
            raise ConfigError(f"model.arch_options.projector must be auto or always, got {self.projector!r}")


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float, task: str) -> torch.Tensor:
    """T²-scaled KL(teacher ‖ student) per position (softmax over classes, or sigmoid for one
    channel) for a task whose targets are class labels; plain MSE for image outputs. Zero when
    the logits agree."""
    from flemme_core.tasks import get_task

    if not get_task(task).labels:
        return F.mse_loss(student, teacher)
    t2 = temperature ** 2
    s, t = student / temperature, teacher / temperature
    if student.shape[1] == 1:
        p = torch.sigmoid(t)
        # BCE(s, p) - BCE(t, p) = KL(Bernoulli(p) ‖ Bernoulli(sigmoid(s)))
        return (F.binary_cross_entropy_with_logits(s, p) - F.binary_cross_entropy_with_logits(t, p)) * t2
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="none").sum(1)
    return kl.mean() * t2


@contextlib.contextmanager
def capture(*modules: nn.Module) -> Iterator[list[Any]]:
    """Record each module's latest output (features, logits) while the block runs."""
    outputs: list[Any] = [None] * len(modules)

    def hook(i: int):
        def grab(_module, _inputs, output):
            outputs[i] = output
        return grab

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


class Distill(Architecture):
    """See the module docstring."""

    Options: ClassVar[type] = DistillOptions

    @classmethod
    def configured_task(cls, arch_options: Any) -> str:
        """The inner architecture's task (``inner: ae`` distils a reconstruction model)."""
        from flemme_core.registry import get_registry

        inner = get_registry().get("architecture", str(dict(arch_options).get("inner", "unet"))).load()
        return inner.configured_task(dict(arch_options).get("inner_options") or {})

    def __init__(self, config: ModelConfig, build_encoder: BuildEncoder):
        super().__init__(config, build_encoder)  # self.encoder: the student encoder (model.encoder)
        from flemme_core.registry import get_registry

        opts: DistillOptions = self.options
        inner_cfg = dataclasses.replace(config, arch=opts.inner, arch_options=dict(opts.inner_options))
        inner = get_registry().get("architecture", opts.inner).load()
        student_encoder = self.encoder
        self.student = inner(inner_cfg, lambda **kw: build_encoder(**kw) if kw else student_encoder)
        del self._modules["encoder"]  # reachable as self.encoder (the student's); stored once
        if opts.teacher_checkpoint:
            from flemme_core.checkpoint import load_model

            loaded = load_model(opts.teacher_checkpoint)
            # a distill run's checkpoint (e.g. one that trained only its teacher stage) gives its teacher
            self.teacher = loaded.teacher if isinstance(loaded, Distill) else loaded
            tc = self.teacher.config
            if (tc.dims, tc.in_channels, tc.out_channels) != (config.dims, config.in_channels, config.out_channels):
                raise ConfigError(f"teacher_checkpoint is a {tc.dims}D {tc.in_channels}->{tc.out_channels} model; "
                                  f"this model is {config.dims}D {config.in_channels}->{config.out_channels}")
        else:
            teacher_cfg = encoder_config_from_dict(opts.teacher)
            # The teacher's own config names its encoder, so it can be saved and reused on its own.
            self.teacher = inner(dataclasses.replace(inner_cfg, encoder=teacher_cfg),
                                 lambda **kw: build_encoder(**{"encoder": teacher_cfg, **kw}))
            if opts.teacher_init is not None:
                self._init_teacher_from_branch(opts.teacher_init, opts.inner)
        self.task = self.student.task
        from flemme_core.build import loss_spec

        self.default_loss = [dict(item) for item in loss_spec(self.student)]
        # What each side may train when its stage comes (frozen branches stay frozen).
        self._trainable = {"teacher": {n: p.requires_grad for n, p in self.teacher.named_parameters()},
                           "student": {n: p.requires_grad for n, p in self.student.named_parameters()}}
        self.pairs, self.projectors = self._feature_pairs(opts)
        self.stage: str | None = None

    # -- structure -----------------------------------------------------------------
    @property
    def encoder(self):
        return self.student.encoder

    def _feature_pairs(self, opts: DistillOptions) -> tuple[list[tuple[int, int]], nn.ModuleList]:
        t_enc, s_enc = self.teacher.encoder, self.student.encoder
        n = len(t_enc.feature_strides)
        if opts.feature_levels == "all":
            levels = list(range(n))
        elif opts.feature_levels == "last":
            levels = [n - 1]
        elif isinstance(opts.feature_levels, list) and all(isinstance(i, int) and -n <= i < n
                                                           for i in opts.feature_levels):
            levels = sorted({i % n for i in opts.feature_levels})
        else:
            raise ConfigError(f"model.arch_options.feature_levels must be all, last or teacher level indices "
                              f"below {n}, got {opts.feature_levels!r}")
        pairs, projectors = [], nn.ModuleList()
        for t in levels:
            ts = t_enc.feature_strides[t]
            s = min(range(len(s_enc.feature_strides)),
                    key=lambda j: (abs(math.log2(s_enc.feature_strides[j] / ts)), s_enc.feature_strides[j]))
            tc, sc = t_enc.feature_channels[t], s_enc.feature_channels[s]
            same = tc == sc and opts.projector == "auto"
            projectors.append(nn.Identity() if same else layers.conv(self.config.dims, sc, tc, kernel_size=1))
            pairs.append((t, s))
        return pairs, projectors

    def _init_teacher_from_branch(self, branch_id: str, inner: str) -> None:
        """Start the teacher's decoder and head from the model a branch was trained in.

        A fused teacher otherwise learns its decoder from scratch while its branches come
        trained; with the fusion's ``residual`` on the same branch the teacher starts as
        exactly that branch's model, and its stage can only refine it.
        """
        from flemme_core.weights import load_into, read_safetensors

        encoder = self.teacher.encoder
        if not hasattr(encoder, "branches"):
            raise ConfigError(f"model.arch_options.teacher_init names a branch of an mmfd teacher, but the teacher "
                              f"encoder is {self.teacher.config.encoder.name!r}")
        branch = encoder._branch(branch_id)
        path = branch.opts.checkpoint
        if not path:
            raise ConfigError(f"teacher_init: branch {branch.id!r} has no checkpoint (a flemme model) to take a "
                              f"decoder from; give it checkpoint: path/to/best.safetensors")
        if branch.source_arch != inner:
            raise ConfigError(f"teacher_init: branch {branch.id!r} was trained as {branch.source_arch!r} but the "
                              f"teacher is {inner!r}; set inner: {branch.source_arch} or train the branch as {inner}")
        tensors, _ = read_safetensors(path, lambda k: not k.startswith("encoder."))  # the branch read the rest
        rest = nn.ModuleDict({n: m for n, m in self.teacher.named_children() if n != "encoder"})
        load_into(rest, tensors, f"teacher decoder <- {path}", hint="the fused widths and strides must be the "
                  f"branch's: set residual: {branch.id} (or channels to {branch.channels}) and decoder_family: "
                  f"{branch.id}")

    # -- stages --------------------------------------------------------------------
    def training_stages(self) -> list[str]:
        opts: DistillOptions = self.options
        if opts.stages is not None:
            return list(opts.stages)
        return ["student"] if opts.teacher_checkpoint else ["teacher", "student"]

    def begin_stage(self, name: str) -> None:
        if name not in STAGES:
            raise ConfigError(f"distill has stages teacher and student, not {name!r}; check train.stages")
        self.stage = name
        for side, module in (("teacher", self.teacher), ("student", self.student)):
            for n, p in module.named_parameters():
                p.requires_grad_(side == name and self._trainable[side][n])
        for p in self.projectors.parameters():
            p.requires_grad_(name == "student")
        self.train(self.training)

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        if getattr(self, "stage", None) == "student":
            self.teacher.eval()
        return self

    # -- what the trainer calls ----------------------------------------------------
    def inputs_and_target(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.student.inputs_and_target(batch)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> Any:
        return self.student(x) if context is None else self.student(x, context)

    def evaluated(self) -> Architecture:
        """What validation measures: the teacher while it trains (the student is untrained
        then, its metrics would say nothing), the student otherwise (what is deployed)."""
        return self.teacher if self.stage == "teacher" else self.student

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluated().predict(x)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return self.student.example_input(batch_size)

    def validation_metrics(self, batch: Batch) -> dict[str, float] | None:
        return self.evaluated().validation_metrics(batch)

    def training_loss(self, batch: Batch, criterion: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        if self.stage == "teacher":
            loss, logs = self.teacher.training_loss(batch, criterion)
            return loss, {f"teacher_{k}": v for k, v in logs.items()}
        return self.distillation_loss(batch, criterion)

    def distillation_loss(self, batch: Batch, criterion: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        """The student stage's weighted sum of task, feature and logit terms, and each term."""
        opts: DistillOptions = self.options
        x, _ = self.student.inputs_and_target(batch)
        with torch.no_grad(), capture(self.teacher.encoder) as got:
            t_out = self.teacher(x)
        t_feats = got[0]
        with capture(self.student.encoder, self.student) as got:
            task, logs = self.student.training_loss(batch, criterion)
        s_feats, s_out = got
        if s_feats is None or s_out is None:  # the inner loss bypassed __call__: run the student once more
            with capture(self.student.encoder) as got:
                s_out = self.student(x)
            s_feats = got[0]
        feat = sum(F.mse_loss(resample(proj(s_feats[s]), t_feats[t].shape[2:]), t_feats[t])
                   for (t, s), proj in zip(self.pairs, self.projectors)) / len(self.pairs)
        total = opts.task_weight * task + opts.feature_weight * feat
        out = {**logs, "task": float(task.detach()), "feature": float(feat.detach())}
        if opts.logit_weight > 0:
            logit = logit_distillation(_first(s_out), _first(t_out), opts.temperature, self.task)
            total = total + opts.logit_weight * logit
            out["logit"] = float(logit.detach())
        return total, out

    # -- introspection ---------------------------------------------------------------
    def evaluation_variants(self) -> dict[str, Architecture]:
        """Sub-models worth evaluating side by side (proposed generic hook for ``flemme eval``)."""
        return {"teacher": self.teacher, "student": self.student}

    def extra_components(self) -> list[tuple[str, str]]:
        """Registered components besides model.encoder and the architecture (for checkpoints)."""
        out = [("architecture", self.options.inner), ("encoder", self.teacher.config.encoder.name)]
        for enc in (self.teacher.encoder, self.student.encoder):
            out += getattr(enc, "components", list)()
        return list(dict.fromkeys(out))

    def standalone_config(self) -> ModelConfig:
        """Rebuildable from the checkpoint alone: the teacher inlined (its branches' and a
        teacher checkpoint's files are only initialisations), ``teacher_init`` dropped and the
        stages kept explicit (a teacher checkpoint meant "student only")."""
        opts: DistillOptions = self.options
        out = dict(self.config.arch_options)
        out.pop("teacher_init", None)
        out["stages"] = self.training_stages()
        teacher = self.teacher.standalone_config()
        same_inner = teacher.arch == opts.inner and dict(teacher.arch_options or {}) == dict(opts.inner_options)
        if opts.teacher_checkpoint is None or same_inner:
            out.pop("teacher_checkpoint", None)
            out["teacher"] = teacher.to_dict()["encoder"]
        return dataclasses.replace(super().standalone_config(), arch_options=out)

    def summary_extra(self) -> dict[str, Any]:
        count = lambda m: sum(p.numel() for p in m.parameters())
        return {"stages": self.training_stages(), "teacher_parameters": count(self.teacher),
                "student_parameters": count(self.student), "projector_parameters": count(self.projectors),
                "distilled_levels": [{"teacher": t, "student": s} for t, s in self.pairs]}
