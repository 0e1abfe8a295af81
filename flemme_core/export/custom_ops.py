"""ONNX custom-op domains supplied by plugins (the ``register_onnx_ops`` hook).

A plugin whose module has a fused kernel that ONNX cannot express with standard operators
(mamba's selective scan, which as an ONNX ``Scan`` runs a small step graph per time step)
registers one ONNX domain with an :class:`OnnxCustomOps`: the torch→ONNX translations the
exporter uses for its torch custom ops, and the ONNX Runtime custom-op library that runs
them. The core never names a plugin or a domain:

* ``flemme export`` (ONNX) lets modules emit the domains whose library is available here
  (:func:`flemme_core.export.modes.custom_domains` inside ``export_mode``), unless
  ``--portable`` asks for standard operators only, and records in the file's metadata
  (``custom_domains``) the domains its graph uses;
* every ONNX Runtime session the core creates registers the libraries of the domains its
  file needs (:func:`register_libraries`); a domain with no installed provider is a
  one-line error naming the domain and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import FlemmeError

KIND = "onnx-domain"  # the registry kind (flemme_core.registry.KINDS)


@dataclass(frozen=True)
class OnnxCustomOps:
    """What a plugin gives for one ONNX domain.

    ``library()`` returns the path of a shared library exporting ONNX Runtime's
    ``RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*)`` (building it on first
    call), or raises with a one-line reason when it cannot here (no compiler, ...);
    ``translations()`` maps torch op overloads (``torch.ops.ns.op.default``) to onnxscript
    functions emitting the domain's ops (torch.onnx's ``custom_translation_table``).
    """

    domain: str
    library: Callable[[], str]
    translations: Callable[[], dict[Any, Callable[..., Any]]]


class MissingCustomOps(FlemmeError):
    """An ONNX file needs a custom-op domain this installation cannot run."""


def providers() -> dict[str, OnnxCustomOps]:
    """Every registered domain, by name (the factories are called: they import the plugin's
    light module, not torch extensions)."""
    from ..registry import get_registry

    found = {}
    for name, component in get_registry().components(KIND).items():
        ops = component.load()()
        if not isinstance(ops, OnnxCustomOps) or ops.domain != name:
            raise FlemmeError(f"onnx-domain {name!r} from {component.provider} did not give an OnnxCustomOps for "
                              f"{name!r}; fix the plugin's register_onnx_ops")
        found[name] = ops
    return found


def for_export(portable: bool) -> tuple[list[str], dict[Any, Callable[..., Any]], list[str]]:
    """(domains an ONNX export may emit, their translation table, notes on domains left out)."""
    if portable:
        return [], {}, []
    domains, table, notes = [], {}, []
    for name, ops in providers().items():
        try:
            ops.library()
        except Exception as exc:  # noqa: BLE001 - no compiler etc.: the portable graph instead
            notes.append(f"ONNX custom ops {name!r} unavailable here ({_one_line(exc)}); standard operators used")
            continue
        domains.append(name)
        table.update(ops.translations())
    return domains, table, notes


def used_domains(model_proto: Any, offered: list[str]) -> list[str]:
    """The offered custom domains the exported graph (or its functions) imports."""
    imported = {o.domain for o in model_proto.opset_import}
    for function in model_proto.functions:
        imported |= {o.domain for o in function.opset_import}
    return sorted(d for d in offered if d in imported)


def register_libraries(options: Any, domains: list[str], path: str) -> None:
    """Register with ONNX Runtime ``options`` the library of each domain the file at ``path``
    needs; one-line :class:`MissingCustomOps` when a domain has no provider or cannot build."""
    if not domains:
        return
    found = providers()
    for domain in domains:
        if domain not in found:
            raise MissingCustomOps(
                f"{path!r} needs ONNX Runtime custom ops of domain {domain!r}, which no installed plugin provides; "
                f"install the plugin that exported it (e.g. flemme-mamba for 'flemme.mamba'), or re-export with "
                f"`flemme export --portable` (standard operators only)")
        try:
            library = found[domain].library()
        except Exception as exc:  # noqa: BLE001 - one line naming the domain and why
            raise MissingCustomOps(f"{path!r} needs ONNX Runtime custom ops of domain {domain!r}, unavailable here "
                                   f"({_one_line(exc)}); fix that, or re-export with `flemme export --portable`"
                                   ) from None
        options.register_custom_ops_library(library)


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


__all__ = ["KIND", "MissingCustomOps", "OnnxCustomOps", "for_export", "providers", "register_libraries",
           "used_domains"]
