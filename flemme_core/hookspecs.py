"""The public hook specifications of flemme: everything a plugin can contribute.

A plugin is a module (found through the ``flemme`` entry-point group, or registered
explicitly) that implements some of these hooks with ``@flemme_core.hookimpl``.
Each hook receives a ``register`` callable; calling it records a *lazy* component:
a name, a one-line description and a factory given as ``"module:attribute"`` so that
listing components never imports torch or the plugin's model code.

    register(name, factory, description="", **metadata)

This module must stay import-cheap (pluggy only).
"""

from __future__ import annotations

import pluggy

PROJECT = "flemme"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_encoders(register) -> None:
    """Register encoder families.

    The factory is called as ``factory(config: EncoderConfig) -> Encoder`` and must
    return an object honouring :class:`flemme_core.encoder.Encoder` (multi-scale
    features fine to coarse, channels-first, plus the family's decoder blocks).
    Metadata ``example={...}``: encoder options the smallest working example needs
    (conformance tests build every family with ``channels: [16, 32]`` plus these).
    """


@hookspec
def register_architectures(register) -> None:
    """Register architectures (unet, ae, ...).

    The factory is called as ``factory(config: ModelConfig, build_encoder) ->
    Architecture`` where ``build_encoder(**overrides) -> Encoder`` builds the configured
    encoder family (overrides: ``in_channels``, ``image_size``, ``context_dim`` or a whole
    ``encoder`` config). An architecture never names an encoder family.

    Metadata:

    * ``task="segmentation" | "reconstruction" | "generation"`` (default losses and metrics);
    * ``encoder=False``: a whole network that takes no encoder family (MONAI's UNet from
      flemme-monai, or yours). The factory is then called with ``build_encoder=None``,
      ``config.encoder`` is ``None`` (stored so in checkpoints), ``Architecture.encoder`` is
      ``None``, and a config or ``--encoder`` naming an encoder for it is a one-line error. Its
      sizes go in ``model.arch_options`` (its ``Options`` dataclass); ``summary_extra()`` may
      return ``network`` (one line saying what was built) and ``total_stride``;
    * ``widths="key"``: the ``arch_options`` key holding the widths (a list, or one number) that
      scale the network, for ``flemme compare``'s ``match: params``; ``width_multiple=N`` if
      they must stay multiples of N.
    """


@hookspec
def register_losses(register) -> None:
    """Register losses.

    The factory is called as ``factory(out_channels: int, dims: int, **options) -> nn.Module``
    and the module as ``loss(prediction, target) -> scalar tensor``.
    """


@hookspec
def register_fusions(register) -> None:
    """Register fusion strategies that merge aligned multi-branch features.

    The factory is called as ``factory(channels: int, num_branches: int, dims: int,
    **options) -> nn.Module`` and the module as ``fuse(list_of_features) -> feature``
    where every feature is ``(B, channels, *spatial)`` on one grid.
    """


@hookspec
def register_datasets(register) -> None:
    """Register dataset presets (real images shipped by packages, synthetic sets).

    The factory is called as ``factory(**options) -> DatasetSplits`` with the
    training and held-out items; it must not download anything.
    """


@hookspec
def register_tasks(register) -> None:
    """Register tasks: what an architecture's output means (``flemme_core.tasks``).

    The factory (usually ``"module:INSTANCE"``) gives a :class:`flemme_core.tasks.Task` (or a
    class/callable returning one): its standard metrics and their direction, the monitored
    metric, ``prediction(output)`` (logits -> labels, or the image), its default loss and
    whether targets are class labels. An architecture names its task in ``Architecture.task``;
    the trainer, evaluator and ``flemme predict`` use the resolved object, never the name.
    """


@hookspec
def register_commands(register) -> None:
    """Register ``flemme`` subcommands.

        register(name, "module:click_command_attr", description="one line")

    ``name`` is the subcommand (``flemme <name>``); the factory string names a
    :class:`click.Command` (or group) that is imported only when that subcommand runs, so
    ``flemme --help`` lists every command with its distribution (from the description given
    here) without importing the command's module. The command's module may import torch
    freely inside the command, but should keep its own top level import-cheap.

    Contract:

    * a name already taken by a core command, or by another distribution, is a conflict
      reported by ``flemme list`` / ``flemme plugins``; the core's command wins;
    * a module that fails to import, or an attribute that is not a ``click.Command``,
      fails as one ``Error:`` line naming the distribution when the command is run;
    * raise :class:`flemme_core.FlemmeError` (or a subclass) for user mistakes: one
      ``Error:`` line, non-zero exit; any other exception escaping the command is reported
      as ``Error: error in plugin <distribution>: ...`` in one line (``FLEMME_DEBUG=1``
      shows the traceback).

    The core registers its own newer commands through this hook too (``flemme_core/builtin.py``).
    """


@hookspec
def register_onnx_ops(register) -> None:
    """Register ONNX custom-op domains: fused kernels for ONNX Runtime, with their exporters.

        register(domain, "module:attribute", description="one line")

    ``domain`` is the ONNX domain of the ops (e.g. ``"flemme.mamba"``); the factory is called
    with no argument and returns a :class:`flemme_core.export.custom_ops.OnnxCustomOps` for
    that domain: ``library()`` (the path of an ONNX Runtime custom-op library exporting
    ``RegisterCustomOps``, built on first call; raising with a one-line reason when it cannot
    be built here) and ``translations()`` (torch custom op overload -> onnxscript function
    emitting the domain's op, for torch.onnx's ``custom_translation_table``).

    Contract:

    * a module emits the domain's ops only inside ``export_mode("onnx")`` when
      :func:`flemme_core.export.modes.custom_domains` contains it (``flemme export`` offers the
      domains whose library builds, none with ``--portable``), and keeps a standard-operator
      path otherwise;
    * every ONNX Runtime session the core creates registers the libraries of the domains the
      file records (``custom_domains`` in its metadata); a file needing a domain that no
      installed plugin provides fails in one line naming the domain and the fix.
    """
