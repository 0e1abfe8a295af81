"""What every cell of a study is allowed to spend, which cells a process runs, and
``match: params`` (a row's widths scaled so that families are compared at equal size).

Budgets are enforced by the trainer itself (``train.steps``, ``train.max_seconds``): a
study never has a training loop of its own.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

from ..config import set_dotted
from ..errors import ConfigError

#: the step cap of a wall-clock budget given without steps (the time binds long before)
SECONDS_STEP_CAP = 1_000_000
MATCH_TOLERANCE = 0.10


@dataclasses.dataclass(frozen=True)
class Budget:
    """Equal steps, equal wall-clock seconds of training steps, or both (whichever ends first)."""

    steps: int | None = None
    seconds: float | None = None

    def train_keys(self) -> dict[str, Any]:
        """The ``train:`` keys that enforce this budget in the trainer."""
        out: dict[str, Any] = {}
        if self.seconds is not None:
            out["max_seconds"] = self.seconds
            out["steps"] = self.steps or SECONDS_STEP_CAP
        elif self.steps is not None:
            out["steps"] = self.steps
        return out

    def describe(self) -> str:
        parts = ([f"{self.steps} steps"] if self.steps else []) + ([f"{self.seconds:g} s"] if self.seconds else [])
        return " or ".join(parts) or "the study's train.steps"


def parse_budget(value: Any) -> Budget:
    """``steps=600``, ``seconds=180``, ``steps=2000,seconds=180`` or a mapping of the same."""
    if isinstance(value, Budget):
        return value
    if value is None:
        return Budget()
    if isinstance(value, str):
        items = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            key, sep, text = part.partition("=")
            if not sep:
                raise ConfigError(f"budget {value!r}: expected steps=N or seconds=S (e.g. --budget steps=600)")
            items[key.strip()] = text.strip()
        value = items
    if not isinstance(value, dict):
        raise ConfigError(f"budget must be like {{steps: 600}} or {{seconds: 180}}, got {value!r}")
    unknown = sorted(set(value) - {"steps", "seconds"})
    if unknown:
        from ..errors import unknown_name_message

        raise ConfigError(unknown_name_message("budget key", unknown[0], ["seconds", "steps"],
                                               "e.g. --budget steps=600 or --budget seconds=180"))
    steps, seconds = value.get("steps"), value.get("seconds")
    try:
        steps = None if steps is None else float(steps)
        seconds = None if seconds is None else float(seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"budget {value!r}: steps and seconds must be numbers (e.g. steps=600)") from None
    if steps is not None and (steps < 1 or steps != int(steps)):
        raise ConfigError(f"budget steps must be a positive whole number, got {value.get('steps')!r}; "
                          "e.g. --budget steps=600")
    if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"budget seconds must be a positive number, got {value.get('seconds')!r}; "
                          "e.g. --budget seconds=180")
    return Budget(steps=None if steps is None else int(steps), seconds=seconds)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``i/n`` (1-based) -> (i, n); None -> (1, 1)."""
    if text is None:
        return 1, 1
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = 0
    if not sep or n < 1 or not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r} must be i/n with 1 <= i <= n (e.g. --shard 2/4 runs the second "
                          "of four parts)")
    return i, n


# -- match: params ------------------------------------------------------------------------
def build_cheaply(model_config: dict[str, Any]) -> Any:
    """The model of a config built on the meta device (no memory, no init cost), or on the CPU
    for factories that compute on their tensors while building."""
    import torch

    from ..build import build_model

    try:
        # a factory that loads weights (e.g. another cell's model) copies them into meta tensors: a
        # no-op that torch warns about tensor by tensor
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build_model(copy.deepcopy(model_config))
    except Exception:  # noqa: BLE001 - e.g. .item() on a meta tensor; a real mistake fails again on the CPU
        return build_model(copy.deepcopy(model_config))


def count_parameters(model_config: dict[str, Any]) -> int:
    """Parameters of a model config (built cheaply)."""
    return sum(p.numel() for p in build_cheaply(model_config).parameters())


def get_dotted(config: dict[str, Any], key: str) -> Any:
    """``config["encoder"]["channels"]`` for ``encoder.channels``; None when a part is missing."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _scaled(widths: Any, scale: float, multiple: int) -> Any:
    if isinstance(widths, list):
        return [max(multiple, round(w * scale / multiple) * multiple) for w in widths]
    return max(multiple, round(widths * scale / multiple) * multiple)


def match_params(model_config: dict[str, Any], target: float, key: str = "encoder.channels", multiple: int = 8,
                 base: Any = None, counter: Callable[[dict[str, Any]], int] = count_parameters,
                 what: str = "row") -> tuple[dict[str, Any], int]:
    """Scale the widths at ``key`` (a list, or one number) so that the model has ``target``
    parameters within ±10%; widths stay multiples of ``multiple``. Returns the new config
    and its parameter count, or raises one line naming the closest size it could reach.

    Parameters grow about quadratically with a common width factor, so a bisection on the
    factor finds the crossing; the neighbours of the crossing are tried too because of
    the rounding to multiples. Widths the family refuses (heads, windows) are skipped.
    """
    widths = base if base is not None else get_dotted(model_config, key)
    if widths is None:
        raise ConfigError(f"match: params for {what}: the model sets no widths at {key}; give them (e.g. "
                          f"{key}: [16, 32, 64, 128]) or name the width key with match: {{key: ...}}")
    if target <= 0:
        raise ConfigError(f"match: params for {what} must be a positive parameter count, got {target!r}")
    cache: dict[str, int | None] = {}

    def size(scale: float) -> tuple[Any, int | None]:
        w = _scaled(widths, scale, multiple)
        label = repr(w)
        if label not in cache:
            cfg = copy.deepcopy(model_config)
            set_dotted(cfg, key, w)
            try:
                cache[label] = counter(cfg)
            except ConfigError:
                cache[label] = None
        return w, cache[label]

    lo, hi = 1e-3, 1.0
    while (size(hi)[1] or 0) < target and hi < 1e4:
        hi *= 2
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        n = size(mid)[1]
        if n is not None and n >= target:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1.0005:
            break
    seen = [(w, n) for w, n in (size(s) for s in (lo, hi)) if n is not None]
    unit = max(1, max(widths) if isinstance(widths, list) else widths)
    for step in range(-3, 4):  # neighbouring multiples around the crossing
        w, n = size(hi * (1 + step * multiple / unit))
        if n is not None:
            seen.append((w, n))
    if not seen:
        raise ConfigError(f"match: params for {what}: no scaling of {key} {widths} builds; check the row's options")
    best_w, best_n = min(seen, key=lambda wn: abs(wn[1] - target))
    if abs(best_n - target) > MATCH_TOLERANCE * target:
        raise ConfigError(f"match: params {target:,.0f} is impossible for {what}: the closest is {best_n:,} "
                          f"parameters ({key} {best_w}, {100 * (best_n - target) / target:+.0f}%); choose a target "
                          f"within reach or another width multiple (now {multiple})")
    out = copy.deepcopy(model_config)
    set_dotted(out, key, best_w)
    return out, best_n
