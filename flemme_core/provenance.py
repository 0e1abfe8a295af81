"""Where a plugin came from, and what to tell a user whose checkpoint needs a missing one.

A checkpoint records which distribution provided each component and, since this
module, where that distribution was installed from (PEP 610 ``direct_url.json``: a local
path, a VCS URL, or a package index). When a component is missing the message says what
is actually wrong -- installed but disabled, installed but failing, installed at a version
that lacks it, or not installed -- and it never turns a name read from the file into a
ready-to-run ``pip install``: the file is untrusted, so a distribution name that neither
the registry nor the shipped plugins vouch for is reported as the file's own claim.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlparse

#: distributions shipped with flemme (this repository's plugins/), vouched for by name.
SHIPPED = ("flemme-core", "flemme-cnn", "flemme-vit", "flemme-mamba", "flemme-pyramid", "flemme-mmfd",
           "flemme-diffusion")
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")  # PEP 508 names, bounded length


def distribution_source(name: str) -> str:
    """'local path /x/y', 'git+https://...@abc', 'a package index', or '' if not installed."""
    try:
        dist = importlib_metadata.distribution(name)
    except importlib_metadata.PackageNotFoundError:
        return ""
    text = dist.read_text("direct_url.json")
    if not text:
        return "a package index"
    try:
        data = json.loads(text)
    except ValueError:
        return ""
    url = str(data.get("url", ""))
    if url.startswith("file://"):
        editable = " (editable)" if (data.get("dir_info") or {}).get("editable") else ""
        return f"local path {unquote(urlparse(url).path)}{editable}"
    vcs = data.get("vcs_info") or {}
    if vcs:
        return f"{vcs.get('vcs', 'vcs')}+{url}@{vcs.get('commit_id', '?')}"
    return url


def provenance_of(distributions: Iterable[str]) -> dict[str, str]:
    """distribution -> where it was installed from, for the installed ones (stored in checkpoints)."""
    out = {}
    for name in distributions:
        source = distribution_source(name)
        if source:
            out[name] = source
    return out


def _printable(text: str, limit: int = 120) -> str:
    clean = "".join(c if c.isprintable() else "?" for c in str(text))
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _installed_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except (importlib_metadata.PackageNotFoundError, ValueError):
        return ""


def missing_component_message(path: str, kind: str, name: str, claimed: str, meta: Mapping[str, Any]) -> str:
    """One line: why ``kind name`` (which the checkpoint says ``claimed`` provides) is unavailable."""
    from .registry import get_registry

    registry = get_registry()
    dist, _, version = str(claimed).partition(" ")
    what = f"{str(path)!r} needs {kind} {_printable(name, 60)!r}"
    for provider, why in registry.disabled:
        if provider.name == dist:
            fix = ("remove it from FLEMME_DISABLE_PLUGINS" if "FLEMME_DISABLE_PLUGINS" in why else
                   f"add it to FLEMME_PLUGINS (FLEMME_PLUGINS={dist})")
            return f"{what} from {provider}, which is installed but {why}; {fix}"
    for record in registry.failures:
        if record.provider.name == dist:
            return (f"{what} from {record.provider}, which is installed but failed to load ({record.error}); "
                    f"reinstall or upgrade {dist}")
    installed = _installed_version(dist) if _NAME.match(dist) else ""
    if installed:
        return (f"{what}, which the installed {dist} {installed} does not provide (the checkpoint was saved with "
                f"{dist} {_printable(version, 40) or '(version not recorded)'}); install that version of {dist}")
    if not _NAME.match(dist):
        return (f"{what}, which no installed plugin provides; the checkpoint names no valid distribution for it "
                f"({_printable(claimed, 60)!r}): install the plugin that provides {kind} {_printable(name, 60)!r}")
    source = (meta.get("provenance") or {}).get(dist, "")
    where = f", installed from {_printable(source)}" if source else ""
    if dist in SHIPPED:
        return (f"{what}, which no installed plugin provides; it comes from {dist} (a flemme plugin; saved with "
                f"version {_printable(version, 40) or '?'}{where}): install the distribution {dist} that provided it")
    return (f"{what}, which no installed plugin provides; the checkpoint claims (unverified: the file says so) it came "
            f"from the distribution {dist!r} {_printable(version, 40)}{where}: install the distribution {dist} that "
            f"provided it only if you know and trust it")
