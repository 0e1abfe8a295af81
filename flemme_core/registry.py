"""Plugin discovery and the component registry.

Plugins are loaded one entry point at a time (not with pluggy's own loader) so that a
plugin that fails to import, or whose hook raises, is recorded and reported while every
other plugin still works. Components are registered lazily: a name, a description and
a ``"module:attribute"`` factory; nothing heavy is imported until a component is built.

Environment variables (as pytest and tox offer):

* ``FLEMME_DISABLE_PLUGIN_AUTOLOAD=1``: do not scan entry points; only the core's
  built-in components and plugins registered explicitly (or named in ``FLEMME_PLUGINS``).
* ``FLEMME_PLUGINS=name,...``: with autoload disabled, the entry points or distributions
  to load anyway.
* ``FLEMME_DISABLE_PLUGINS=name,...``: entry-point or distribution names (wildcards
  allowed) never to load.
* ``FLEMME_PLUGIN_MODULES=module,...``: importable modules with hook implementations to
  register as if by :func:`flemme_core.register_plugin`, in this process and the processes it
  starts (as ``PYTEST_PLUGINS``; test suites use it for families defined in the suite).
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata as importlib_metadata
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, unknown_name_message

ENTRY_POINT_GROUP = "flemme"
KINDS = {
    "encoder": "register_encoders",
    "architecture": "register_architectures",
    "loss": "register_losses",
    "fusion": "register_fusions",
    "dataset": "register_datasets",
    "command": "register_commands",
    "task": "register_tasks",
    "onnx-domain": "register_onnx_ops",
}
PLURAL = {"encoders": "encoder", "architectures": "architecture", "losses": "loss",
          "fusions": "fusion", "datasets": "dataset", "commands": "command", "tasks": "task",
          "onnx-domains": "onnx-domain"}


@dataclass(frozen=True)
class Provider:
    """Who registered a component: a distribution (name, version) or an explicit object."""

    name: str
    version: str = ""
    entry_point: str = ""

    def __str__(self) -> str:
        return f"{self.name} {self.version}".strip()


CORE_PROVIDER_NAME = "flemme-core"


@dataclass
class Component:
    """A registered, not yet imported, component."""

    kind: str
    name: str
    factory: str | Callable[..., Any]
    description: str
    provider: Provider
    metadata: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        """Import and return the factory; an import failure names the plugin."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except BaseException as exc:  # SystemExit from a plugin's module too
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise PluginError(
                f"{self.kind} {self.name!r} from {self.provider} could not be loaded "
                f"({self.factory}): {type(exc).__name__}: {exc}; reinstall or upgrade {self.provider.name}"
            ) from exc
        return obj


@dataclass
class PluginRecord:
    """One loaded (or failed) plugin, for `flemme plugins` and `flemme list`."""

    provider: Provider
    module: str
    error: str = ""


@dataclass
class Conflict:
    kind: str
    name: str
    providers: list[Provider]

    def message(self) -> str:
        """Names every provider and asks which to keep: neither is assumed to be the genuine one."""
        who = " and ".join(str(p) for p in self.providers)
        either = " or ".join(f"FLEMME_DISABLE_PLUGINS={p.name}" for p in self.providers)
        return (f"{self.kind} {self.name!r} is registered by both {who}; decide which one to keep, then "
                f"uninstall the other or disable it ({either})")


def _env_list(var: str) -> list[str]:
    return [s.strip() for s in os.environ.get(var, "").split(",") if s.strip()]


def _matches(patterns: list[str], *names: str) -> bool:
    return any(fnmatch.fnmatch(n, p) for p in patterns for n in names if n)


class Registry:
    """Loads plugins and answers 'what is registered under this name'."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginRecord] = []
        self.failures: list[PluginRecord] = []
        self._providers: dict[int, Provider] = {}
        self._explicit: list[tuple[Any, Provider]] = []
        self._components: dict[str, dict[str, Component]] | None = None
        self.conflicts: list[Conflict] = []
        #: installed plugins not loaded, with why (FLEMME_DISABLE_PLUGINS, autoload off).
        self.disabled: list[tuple[Provider, str]] = []
        #: environment-variable entries that named nothing installed (FLEMME_PLUGINS=typo).
        self.unmatched: list[str] = []

    # -- loading -------------------------------------------------------------------
    def _add_plugin(self, obj: Any, provider: Provider) -> None:
        name = f"{provider.name}:{provider.entry_point or getattr(obj, '__name__', id(obj))}"
        if self.pm.is_registered(obj):
            return
        self.pm.register(obj, name=name)
        self._providers[id(obj)] = provider
        self.plugins.append(PluginRecord(provider, getattr(obj, "__name__", repr(obj))))

    def _load_entry_points(self) -> None:
        autoload = os.environ.get("FLEMME_DISABLE_PLUGIN_AUTOLOAD", "").lower() not in ("1", "true", "yes")
        wanted = _env_list("FLEMME_PLUGINS")
        disabled = _env_list("FLEMME_DISABLE_PLUGINS")
        seen: set[tuple[str, str]] = set()
        # Only entry_points.txt is read for every distribution; the metadata (name, version)
        # is parsed for flemme's distributions alone, which keeps `flemme --help` cheap.
        for dist in importlib_metadata.distributions():
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            if not eps:
                continue
            dist_name = dist.metadata["Name"] or "?"
            for ep in eps:
                if (dist_name, ep.name) in seen:
                    continue
                seen.add((dist_name, ep.name))
                provider = Provider(dist_name, dist.version or "", ep.name)
                if _matches(disabled, ep.name, dist_name):
                    self.disabled.append((provider, f"disabled by FLEMME_DISABLE_PLUGINS={','.join(disabled)}"))
                    continue
                if not autoload and not _matches(wanted, ep.name, dist_name):
                    self.disabled.append((provider, ("not loaded: FLEMME_DISABLE_PLUGIN_AUTOLOAD is set and "
                                                     "FLEMME_PLUGINS does not name it")))
                    continue
                try:
                    obj = ep.load()
                except BaseException as exc:  # a broken plugin (even sys.exit) must not take down the others
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    self.failures.append(PluginRecord(provider, ep.value, _one_line(exc)))
                    continue
                self._add_plugin(obj, provider)
        for pattern in wanted:  # a FLEMME_PLUGINS entry that matches no installed plugin is said, not ignored
            if not any(_matches([pattern], ep, dist) for dist, ep in seen):
                names = sorted({ep for _, ep in seen} | {dist for dist, _ in seen})
                self.unmatched.append(unknown_name_message("FLEMME_PLUGINS entry", pattern, names,
                                                           "it matches no installed plugin (entry point or "
                                                           "distribution name)"))

    def _load_env_modules(self) -> None:
        for module_name in _env_list("FLEMME_PLUGIN_MODULES"):
            provider = Provider(module_name, "", "FLEMME_PLUGIN_MODULES")
            try:
                obj = importlib.import_module(module_name)
            except BaseException as exc:  # reported like a broken entry point (sys.exit too)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.failures.append(PluginRecord(provider, module_name, _one_line(exc)))
                continue
            if not any(o is obj for o, _ in self._explicit):
                self._add_plugin(obj, provider)

    def _ensure_loaded(self) -> None:
        if self._components is not None:
            return
        from . import builtin

        self._add_plugin(builtin, Provider(CORE_PROVIDER_NAME, _core_version(), "builtin"))
        self._load_entry_points()
        self._load_env_modules()
        for obj, provider in self._explicit:
            self._add_plugin(obj, provider)
        self._collect()

    def _collect(self) -> None:
        components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.conflicts = []
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            # Call each implementation alone, so a raising hook is isolated and attributed.
            for impl in reversed(hook.get_hookimpls()):
                provider = self._providers.get(id(impl.plugin), Provider(impl.plugin_name))
                register = _Registrar(kind, provider, components[kind], self.conflicts)
                try:
                    impl.function(register=register)
                except BaseException as exc:  # SystemExit too; nothing it registered is kept
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    self.failures.append(PluginRecord(provider, impl.plugin_name,
                                                      f"{hook_name} raised {_one_line(exc)}"))
                    continue
                register.commit()  # a hook's registrations count only if the whole hook succeeded
        self._components = components

    # -- public API ----------------------------------------------------------------
    def register_plugin(self, obj: Any, name: str | None = None) -> None:
        """Register a module or object with hook implementations without installing it.

        For notebooks and tests: ``flemme_core.register_plugin(my_module)``.
        """
        provider = Provider(name or getattr(obj, "__name__", type(obj).__name__), "", "explicit")
        self._explicit.append((obj, provider))
        if self._components is not None:
            self._add_plugin(obj, provider)
            self._collect()

    def unregister_plugin(self, obj: Any) -> None:
        """Undo :meth:`register_plugin` (tests use it to clean up)."""
        self._explicit = [(o, p) for o, p in self._explicit if o is not obj]
        if self.pm.is_registered(obj):
            self.pm.unregister(obj)
            self.plugins = [r for r in self.plugins if r.module != getattr(obj, "__name__", repr(obj))]
        if self._components is not None:
            self._collect()

    def components(self, kind: str) -> dict[str, Component]:
        self._ensure_loaded()
        assert self._components is not None
        return self._components[kind]

    def get(self, kind: str, name: str) -> Component:
        """The component registered as ``name``; unknown names list close matches."""
        comps = self.components(kind)
        for conflict in self.conflicts:
            if conflict.kind == kind and conflict.name == name:
                raise PluginError(conflict.message())
        if name not in comps:
            hint = "see `flemme list`"
            failed = [f.provider.name for f in self.failures]
            if failed:
                hint += f"; plugins that failed to load: {', '.join(sorted(set(failed)))}"
            skipped = sorted({p.name for p, why in self.disabled if "AUTOLOAD" in why})
            if skipped:
                hint += ("; plugin autoload is off (FLEMME_DISABLE_PLUGIN_AUTOLOAD is set), so installed plugins "
                         f"were not loaded ({', '.join(skipped)}): name them in FLEMME_PLUGINS")
            for line in self.unmatched:
                hint += f"; {line}"
            raise PluginError(unknown_name_message(kind, name, comps, hint))
        return comps[name]

    def iter_all(self) -> Iterator[Component]:
        for kind in KINDS:
            yield from self.components(kind).values()

    def loaded_plugins(self) -> list[PluginRecord]:
        self._ensure_loaded()
        return list(self.plugins)

    def plugin_status(self) -> list[tuple[PluginRecord, str]]:
        """One row per plugin, ``(record, "ok" | "FAILED")``: a plugin whose module loaded but
        one of whose hooks raised is listed once, as FAILED, with every error joined."""
        self._ensure_loaded()
        errors: dict[Provider, list[str]] = {}
        modules: dict[Provider, str] = {}
        for rec in self.failures:
            errors.setdefault(rec.provider, []).append(rec.error)
            modules.setdefault(rec.provider, rec.module)
        rows = [(rec, "ok") for rec in self.plugins if rec.provider not in errors]
        rows += [(PluginRecord(p, modules[p], "; ".join(errs)), "FAILED") for p, errs in errors.items()]
        return rows

    def problems(self) -> list[str]:
        """One line per broken plugin or name conflict."""
        self._ensure_loaded()
        lines = [f"plugin {f.provider} ({f.module}) failed: {f.error}" for f in self.failures]
        lines += [c.message() for c in self.conflicts]
        lines += self.unmatched
        return lines

    def provider_of(self, kind: str, name: str) -> Provider | None:
        comp = self.components(kind).get(name)
        return comp.provider if comp else None


class _Registrar:
    """The ``register`` callable handed to hook implementations."""

    def __init__(self, kind: str, provider: Provider, into: dict[str, Component], conflicts: list[Conflict]):
        self.kind, self.provider, self.into, self.conflicts = kind, provider, into, conflicts
        self.pending: list[Component] = []

    def __call__(self, name: str, factory: str | Callable[..., Any], description: str = "",
                 **metadata: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise TypeError(f"{self.kind} {name!r}: factory must be a callable or 'module:attribute'")
        self.pending.append(Component(self.kind, name, factory, description, self.provider, metadata))

    def commit(self) -> None:
        """Add what the hook registered (called only once the hook has returned normally)."""
        for comp in self.pending:
            name = comp.name
            if name in self.into and self.into[name].provider != self.provider:
                existing = [c for c in self.conflicts if c.kind == self.kind and c.name == name]
                if existing:
                    existing[0].providers.append(self.provider)
                else:
                    self.conflicts.append(Conflict(self.kind, name, [self.into[name].provider, self.provider]))
                continue
            self.into[name] = comp
        self.pending = []


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    origin = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {origin[0].filename}:{origin[0].lineno})" if origin else ""
    return (text[0] if text else type(exc).__name__) + where


def _core_version() -> str:
    try:
        return importlib_metadata.version("flemme-core")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (plugins are loaded on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry() -> Registry:
    """Forget loaded plugins and rescan on next use (tests, or after `pip install`)."""
    global _REGISTRY
    explicit = _REGISTRY._explicit if _REGISTRY is not None else []
    _REGISTRY = Registry()
    _REGISTRY._explicit = list(explicit)
    return _REGISTRY


def kind_from_plural(word: str) -> str:
    """'encoders' or 'encoder' -> 'encoder'; unknown words list the valid ones."""
    if word in KINDS:
        return word
    if word in PLURAL:
        return PLURAL[word]
    raise PluginError(unknown_name_message("component kind", word, list(PLURAL)))
