"""Training state on disk without pickle: safetensors for tensors, JSON for the rest.

A save is a small commit protocol, so a run killed at any instant (SIGKILL included)
resumes from a consistent state:

1. ``state-<step>.safetensors``: model weights, optimiser tensors, RNG states (atomic);
2. ``last.safetensors``: the user-facing model checkpoint (atomic);
3. ``state.json``: step, stage, best score, optimiser hyper-parameters, RNG scalars and
   the name of the tensors file of step 1 (atomic) -- this rename *is* the commit;
4. older ``state-*.safetensors`` files are deleted.

When a run finishes, its resume tensors are deleted (:func:`prune_train_state`) unless
``train.keep_state: true``: ``last``/``best`` hold the weights, and a finished run is not resumed.

A kill before 3 leaves the previous ``state.json`` pointing at a complete older file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_write
from ..errors import CheckpointError

STATE_FORMAT = "flemme-train-state/1"
STATE_JSON = "state.json"


# -- random number generators ---------------------------------------------------------
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors + JSON."""
    tensors = {"rng.torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state.clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    info = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}
    return tensors, info


def restore_rng(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))


# -- optimiser ----------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state_dict as ``optim.<param>.<key>`` tensors and JSON scalars."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"optim.{idx}.{key}"] = value.detach().clone().contiguous()
            elif isinstance(value, torch.Tensor):  # 0-d (Adam's step): keep dtype exactly
                tensors[f"optim.{idx}.{key}"] = value.detach().clone().reshape(1)
                scalars.setdefault(str(idx), {})[key] = "__0d__"
            else:
                scalars.setdefault(str(idx), {})[key] = _jsonable(value)
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        info: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, per_param in info["scalars"].items():
        for key, value in per_param.items():
            if value == "__0d__":
                state[int(idx)][key] = state[int(idx)][key].reshape(())
            else:
                state.setdefault(int(idx), {})[key] = value
    groups = []
    for g in info["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"the saved optimiser state does not fit this model ({exc}); "
                              "was the config changed? start a new run with --overwrite") from None


# -- the commit protocol ------------------------------------------------------------------
def save_train_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     info: dict[str, Any], write_model: Any) -> Path:
    """Write tensors, the user checkpoint (``write_model()``), then commit ``state.json``."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    step = int(info["step"])
    tensors = {f"model.{k}": v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_info = flatten_optimizer(optimizer)
    rng_tensors, rng_info = capture_rng()
    tensors.update({k: v.to("cpu") for k, v in optim_tensors.items()})
    tensors.update(rng_tensors)
    name = f"state-{step:09d}.safetensors"
    atomic_write(run_dir / name, lambda tmp: save_file(tensors, tmp, metadata={"format": STATE_FORMAT}))
    write_model()
    record = {"format": STATE_FORMAT, "tensors": name, **info, "optimizer": optim_info, "rng": rng_info}
    text = json.dumps(record, indent=1, sort_keys=True)
    atomic_write(run_dir / STATE_JSON, lambda tmp: Path(tmp).write_text(text))
    for old in run_dir.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return run_dir / STATE_JSON


def prune_train_state(run_dir: Path) -> int:
    """A finished run: delete the resume tensors (model + optimiser + RNG, about 3x the model) and
    keep ``state.json`` marked ``pruned`` (so ``--resume`` still says the run is finished).
    Returns the bytes freed. ``train.keep_state: true`` keeps them."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_JSON
    record = json.loads(path.read_text())
    freed = 0
    for old in run_dir.glob("state-*.safetensors"):
        freed += old.stat().st_size
    record.update({"tensors": None, "pruned": True})
    text = json.dumps(record, indent=1, sort_keys=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))  # commit first: never points at a deleted file
    for old in run_dir.glob("state-*.safetensors"):
        old.unlink(missing_ok=True)
    return freed


def read_train_state(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The committed state record and its tensors (CPU; none for a finished, pruned run)."""
    from safetensors.torch import load_file

    path = Path(run_dir) / STATE_JSON
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} has no training state ({STATE_JSON}) to resume from; "
                              "start without --resume")
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{str(path)!r} is corrupt ({exc}); start a new run with --overwrite") from None
    if record.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a flemme training state ({record.get('format')!r})")
    if record.get("pruned"):
        if not record.get("finished"):
            raise CheckpointError(f"{str(path)!r} has no resume tensors (pruned); start a new run with --overwrite")
        return record, {}
    tensor_path = Path(run_dir) / record["tensors"]
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # noqa: BLE001 - missing or corrupt file: one line for the user
        raise CheckpointError(f"{str(tensor_path)!r} cannot be read ({str(exc).splitlines()[0]}); "
                              "start a new run with --overwrite") from None
    return record, tensors


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"the saved training state does not fit this model ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys); was the config changed?")
