"""What an exported file carries, and reading it back without torch or the plugins.

One JSON document under the key ``flemme`` (ONNX ``metadata_props``; for ``.pt2`` and
TorchScript a zip member ``.../extra/flemme.json``, written through the exporters'
``extra_files``), holding:

* ``config``, ``versions``, ``components``: the checkpoint's model config, component
  versions and providers, as :func:`flemme_core.checkpoint.read_metadata` returns them;
* ``extra``: the checkpoint's whole ``flemme.extra`` (carried over as it is, so whatever
  a trainer records — class names, patch/ROI size, sliding-window settings, spacing, the
  exact preprocessing steps — reaches ``flemme predict`` unchanged);
* ``task``, ``input`` (the shape rule: batch and spatial axes, multiple, minimum), the
  export ``format``, ``notes`` of modules switched for the export, ``verification``,
  ``exported_with`` (torch, and onnx/onnxruntime for ONNX), and for ONNX ``custom_domains``
  (the plugins' custom-op domains the graph uses, registered by every session flemme creates).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .formats import format_of_path

FORMAT = "flemme-export/1"
KEY = "flemme"
ZIP_MEMBER = "extra/flemme.json"


def read_exported_metadata(path: str | Path) -> dict[str, Any]:
    """The flemme metadata of an exported file; one-line :class:`CheckpointError` when the
    file is missing, corrupt, or not a flemme export."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported model {str(path)!r} does not exist")
    fmt = format_of_path(path)
    try:
        text = _read_onnx(path) if fmt == "onnx" else _read_zip(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file to the user
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{str(path)!r} is not a readable {fmt} file (truncated or corrupt?): {detail}") from None
    if text is None:
        raise CheckpointError(f"{str(path)!r} is a {fmt} file but not a flemme export (no flemme metadata); "
                              f"write it with `flemme export`")
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{str(path)!r} has corrupt flemme metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} has flemme metadata of an unknown format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r}; expected {FORMAT}")
    meta["file_bytes"] = path.stat().st_size
    return meta


def _read_onnx(path: Path) -> str | None:
    """The metadata entry of an ONNX file, parsing the protobuf (the weights are read too,
    which is fine at flemme's model sizes; no ONNX Runtime session is created)."""
    from .formats import require

    require("onnx")
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if not model.graph.node:
        raise CheckpointError(f"{str(path)!r} holds no ONNX graph (truncated or not an ONNX file?)")
    return next((p.value for p in model.metadata_props if p.key == KEY), None)


def onnx_custom_domains(path: str | Path) -> list[str]:
    """The ONNX custom-op domains an ONNX file written by ``flemme export`` records as needed
    (whatever the file's name: the exporter verifies a temporary file)."""
    text = _read_onnx(Path(path))
    meta = json.loads(text) if text else {}
    return list(meta.get("custom_domains") or []) if isinstance(meta, dict) else []


def _read_zip(path: Path) -> str | None:
    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if n.endswith(ZIP_MEMBER)), None)
        return zf.read(name).decode("utf-8") if name else None


def describe(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines for ``flemme info`` on an exported file."""
    cfg = meta["config"]
    enc = cfg.get("encoder") or {}
    rule = meta["input"]
    extra = meta.get("extra") or {}
    lines = [("file", f"{meta.get('path', '')} ({meta['file_bytes']:,} bytes, {meta['format_name']})"),
             ("model", (f"{cfg.get('arch')} with encoder {enc.get('name', '(default)')} ({len(rule['patch_size'])}D, "
                       f"{meta['task']}, {meta.get('parameters', 0):,} parameters)")),
             ("input", shape_rule_text(rule)),
             ("versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())),
             ("exported with", ", ".join(f"{k} {v}" for k, v in meta["exported_with"].items()))]
    if meta.get("custom_domains"):
        lines.append(("custom ops", (f"ONNX Runtime domains {', '.join(meta['custom_domains'])} (registered by "
                                     f"flemme's sessions from the plugin that exported them; `flemme export "
                                     f"--portable` writes standard operators only)")))
    if extra.get("class_names"):
        lines.append(("classes", ", ".join(map(str, extra["class_names"]))))
    for key, label in (("preprocessing", "preprocessing"), ("sw", "sliding window"), ("roi_size", "patch size"),
                       ("spacing", "spacing")):
        if key in extra:
            lines.append((label, json.dumps(extra[key], sort_keys=True)))
    for note in meta.get("notes", []):
        lines.append(("note", note))
    for check in meta.get("verification", []):
        lines.append(("verified", (f"input {'×'.join(map(str, check['shape']))}: max abs diff "
                                  f"{check['max_abs_diff']:.2e}, relative {check['relative_error']:.2e}")))
    lines.append(("config", json.dumps(cfg, sort_keys=True)))
    return lines


def shape_rule_text(rule: dict[str, Any]) -> str:
    """``(batch, C, *S)`` and what S may be, in words."""
    patch = "×".join(map(str, rule["patch_size"]))
    head = f"(batch, {rule['in_channels']}, spatial) float32; batch dynamic; "
    if rule["spatial"] == "fixed":
        return head + f"spatial fixed at {patch}"
    return head + (f"spatial dynamic: multiples of {rule['multiple_of']} per axis, at least "
                   f"{'×'.join(map(str, rule['min']))} (trained on {patch})")


def check_input_shape(rule: dict[str, Any], shape: tuple[int, ...], source: str) -> str | None:
    """Why an input of ``shape`` is outside the file's rule, or None."""
    spatial = list(shape[2:])
    if len(shape) != 2 + len(rule["patch_size"]) or shape[1] != rule["in_channels"]:
        return (f"{source} takes (batch, {rule['in_channels']}, {len(rule['patch_size'])} spatial axes) inputs, "
                f"got {tuple(shape)}")
    if rule["spatial"] == "fixed":
        if spatial != list(rule["patch_size"]):
            return (f"{source} was exported with fixed spatial size {'×'.join(map(str, rule['patch_size']))}, "
                    f"got {'×'.join(map(str, spatial))}; use the sliding window at the patch size")
        return None
    m, low = rule["multiple_of"], rule["min"]
    if any(s % m for s in spatial) or any(s < lo for s, lo in zip(spatial, low)):
        valid = [max(lo, -(-s // m) * m) for s, lo in zip(spatial, low)]
        return (f"{source} takes spatial sizes that are multiples of {m} and at least {'×'.join(map(str, low))}, "
                f"got {'×'.join(map(str, spatial))}; pad to {'×'.join(map(str, valid))}")
    return None


def info_text(path: str | Path, as_json: bool = False) -> str:
    """What ``flemme info`` prints for an exported file (needs neither torch nor the plugins)."""
    meta = read_exported_metadata(path)
    meta["path"] = str(path)
    if as_json:
        return json.dumps(meta, indent=2, default=str)
    return "\n".join(f"{label:<14} {text}" for label, text in describe(meta))
