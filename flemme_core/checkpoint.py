"""safetensors checkpoints that rebuild their model from the file alone.

The file holds the weights and, in its metadata, the model config, the resolved
encoder options, the versions of flemme-core and of every plugin the model uses, and
which distribution provides each component, so that a missing plugin can be named.
Writes are atomic: a temporary file in the same folder, fsync, then rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

FORMAT = "flemme-model/1"
T = TypeVar("T")


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see half a file.

    The temporary file is created 0600 by ``mkstemp``; it is given the mode an ordinary
    ``open()`` would (0666 minus the umask) so collaborators can read a run folder.
    """
    from .diskio import as_output_error

    path = Path(path)
    kept = f"the previous {path.name} is unchanged" if path.exists() else f"{path.name} was not written"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        error = as_output_error(exc, path, kept)  # full disk, read-only, no permission: one line
        if error is not None:
            raise error from None
        raise
    return path


def save_model(model, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Save weights + config + versions; ``extra`` (JSON-able) is stored under flemme.extra."""
    from safetensors.torch import save_model as st_save_model

    from .build import components_of, count_parameters, versions_of
    from .provenance import provenance_of

    metadata = {
        "format": FORMAT,
        "flemme.config": model.standalone_config().to_json(),
        "flemme.encoder_resolved": json.dumps(
            {k: getattr(model.encoder.config, k) for k in ("name", "channels", "num_blocks", "patch_size",
                                                           "norm", "act", "dropout", "drop_path", "options")}
            if model.encoder is not None else {},  # a whole network (registered with encoder=False)
            sort_keys=True, default=str),
        "flemme.versions": json.dumps(versions_of(model), sort_keys=True),
        "flemme.components": json.dumps(components_of(model), sort_keys=True),
        "flemme.parameters": str(count_parameters(model)[0]),
        "flemme.extra": json.dumps(dict(extra or {}), sort_keys=True, default=str),
        "flemme.provenance": json.dumps(provenance_of(versions_of(model)), sort_keys=True),  # where plugins came from
    }
    return atomic_write(path, lambda tmp: st_save_model(model, tmp, metadata=metadata))


def read_safetensors_file(path: Path, read: Callable[[Any], T], missing: str, unreadable: str) -> T:
    """``read(handle)`` on the open safetensors file ``path`` (torch's framework); a missing
    file is ``CheckpointError(missing)``, one that does not parse ``CheckpointError(unreadable: why)``.
    One place for both readers (model checkpoints here, foreign weights in :mod:`.weights`)."""
    from safetensors import safe_open

    from .errors import CheckpointError

    if not path.is_file():
        raise CheckpointError(missing)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return read(fh)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file to the user
        raise CheckpointError(f"{unreadable}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded flemme metadata of a checkpoint, without loading weights or plugins."""
    from .errors import CheckpointError

    path = Path(path)
    raw, num_tensors = read_safetensors_file(
        path, lambda fh: (fh.metadata() or {}, len(list(fh.keys()))), f"checkpoint {str(path)!r} does not exist",
        f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?)")
    if raw.get("format") != FORMAT or "flemme.config" not in raw:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not a flemme model checkpoint "
                              f"(no flemme config in its metadata); save it with flemme_core.save_model")
    from .checkpoint_meta import decode_metadata

    meta = decode_metadata(raw, path)  # bounded JSON, every field's type checked: one line per problem
    meta["tensors"] = num_tensors
    meta["file_bytes"] = path.stat().st_size
    return meta


def missing_plugins(meta: Mapping[str, Any], path: str | Path) -> list[str]:
    """One line per component the checkpoint needs that is not available here, saying why
    (disabled, failing, wrong version, not installed) and what to install (never a name
    from the file presented as verified)."""
    from .provenance import missing_component_message
    from .registry import get_registry

    registry = get_registry()
    lines = []
    for key, provider in meta["components"].items():
        kind, _, name = key.partition(":")
        if name not in registry.components(kind):
            lines.append(missing_component_message(str(path), kind, name, provider, meta))
    return lines


def _check_plugins(meta: Mapping[str, Any], path: Path) -> None:
    from .errors import CheckpointError

    missing = missing_plugins(meta, path)
    if missing:
        raise CheckpointError(missing[0])


def load_model(path: str | Path, map_location: str = "cpu"):
    """Rebuild the model a checkpoint describes and load its weights (strictly)."""
    from safetensors.torch import load_model as st_load_model

    from .build import build_model
    from .errors import CheckpointError

    path = Path(path)
    meta = read_metadata(path)
    _check_plugins(meta, path)
    from .checkpoint_meta import check_shapes

    check_shapes(path, meta)  # on the meta device: a config that does not fit the tensors allocates nothing
    model = build_model(meta["config"])
    try:
        missing, unexpected = st_load_model(model, str(path), strict=False, device=map_location)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{str(path)!r}: weights could not be read (truncated or corrupt?): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{str(path)!r} does not match the model it describes ({len(missing)} missing keys, e.g. "
            f"{sorted(missing)[:3]}; {len(unexpected)} unexpected, e.g. {sorted(unexpected)[:3]}); "
            f"were different plugin versions used? saved with {meta['versions']}")
    model.checkpoint_metadata = meta
    return model
