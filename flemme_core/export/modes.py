"""How a module takes part in an export without the core naming it.

A module (any ``nn.Module`` inside a model: a mixer, a block, an architecture) may define

    def export_mode(self, format: str) -> ContextManager[str | None]

Entering the context switches the module to a path the exporters can trace (for example
a pure-PyTorch form of a C++ kernel, or loops written as ``torch`` scan operators so that
the sequence length stays dynamic) and yields a one-line note saying what it did, or None.
Leaving it restores the module. A module for which ``format`` has no exportable path
raises :class:`NotExportable` naming itself and the reason. A module that can only be
traced at one spatial size sets ``export_fixed_spatial = "one-line reason"``. Every instance is switched;
identical notes are kept once, so a model with a hundred mixers of one kind prints one line.

Inside the context, :func:`custom_domains` says which ONNX custom-op domains (registered through
the ``register_onnx_ops`` hook, see :mod:`.custom_ops`) the export may emit: a module with a
fused ONNX Runtime op for its domain uses it when the domain is offered, and its
standard-operator path otherwise (``flemme export --portable``, another format, or no library).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from ..errors import FlemmeError

_CUSTOM_DOMAINS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("flemme_custom_domains",
                                                                             default=frozenset())


def custom_domains() -> frozenset[str]:
    """The ONNX custom-op domains the export in progress may emit (empty outside an ONNX
    export, and for a portable one)."""
    return _CUSTOM_DOMAINS.get()


def fixed_spatial_reasons(model) -> list[str]:
    """Why ``model`` must be exported with fixed spatial axes: the ``export_fixed_spatial``
    attribute (a one-line reason) of any of its modules that computes something per input
    size in Python (a window layout, a padding plan) that the tracer cannot keep symbolic or
    reasons about too slowly. Empty: try dynamic spatial axes."""
    reasons: list[str] = []
    for module in model.modules():
        reason = getattr(module, "export_fixed_spatial", None)
        if isinstance(reason, str) and reason and reason not in reasons:
            reasons.append(reason)
    return reasons


class NotExportable(FlemmeError):
    """A component has no path to the requested format: ``component: reason``."""

    def __init__(self, component: str, reason: str):
        super().__init__(f"{component} cannot be exported: {reason}")
        self.component, self.reason = component, reason


@contextlib.contextmanager
def sdpa_as_4d() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` on 3D ``(batch, tokens, dim)`` inputs runs as 4D with
    one head (the same math): torch's ONNX exporter translates only 4D attention, and
    libraries (timm's SAM windows) call it on 3D tensors."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def lifted(query, key, value, attn_mask=None, *args, **kwargs):
        if query.dim() != 3:
            return original(query, key, value, attn_mask, *args, **kwargs)
        mask = attn_mask.unsqueeze(1) if attn_mask is not None and attn_mask.dim() == 3 else attn_mask
        out = original(query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), mask, *args, **kwargs)
        return out.squeeze(1)

    F.scaled_dot_product_attention = lifted
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def export_mode(model, fmt: str, domains: list[str] | tuple[str, ...] = ()) -> Iterator[list[str]]:
    """Put every module of ``model`` that implements ``export_mode`` into it, offering the
    custom-op ``domains`` (ONNX only); yields the notes."""
    notes: list[str] = []
    token = _CUSTOM_DOMAINS.set(frozenset(domains) if fmt == "onnx" else frozenset())
    with contextlib.ExitStack() as stack:
        stack.callback(_CUSTOM_DOMAINS.reset, token)
        stack.enter_context(sdpa_as_4d())
        for module in model.modules():
            hook = getattr(module, "export_mode", None)
            if not callable(hook):
                continue
            note = stack.enter_context(hook(fmt))
            if note and note not in notes:
                notes.append(note)
        yield notes
