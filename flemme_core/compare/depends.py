"""Rows that train from another row's cell: ``${cells.ROW.checkpoint}`` in a row's options.

Why: some studies train a model from the results of others (a fused teacher from two
trained branches, a student distilled from that teacher, a fine-tune of a pretrained row).
A row names what it needs with a reference in any of its option strings::

    - name: teacher
      arch: distill
      arch_options:
        teacher:
          branches:
            - {id: cnn, checkpoint: "${cells.branch-cnn.checkpoint}"}   # quoted inside {...}

``${cells.ROW.checkpoint}`` is the final model (``last.safetensors``) of row ROW's cell with
the same seed and dataset, ``${cells.ROW.dir}`` that cell's run folder. The study runs, per
seed and dataset, the cells a row needs before it, keeps a cell and the cells it needs in
the same shard, and resolves a reference to a path only inside the cell's own process: the
cell's recorded config (``cell.yaml``, which the changed-config refusal compares) holds the
reference, not a path that changes when the study folder moves. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, unknown_name_message

MARK = "${cells"
REF = re.compile(r"\$\{cells\.([^{}]+?)\.(checkpoint|dir)\}")
#: the file ``${cells.ROW.checkpoint}`` names: the final model (best is chosen on held-out data)
CHECKPOINT = "last.safetensors"
#: a row's sections that may hold references
ROW_SECTIONS = ("encoder", "arch_options", "model", "data", "train")


def references(value: Any, where: str) -> list[str]:
    """The rows that ``value`` (nested mappings, lists, strings) refers to, in order, once each.

    A string that mentions ``${cells`` without being a well-formed reference is one line."""
    found: list[str] = []
    for text in _strings(value):
        if MARK not in text:
            continue
        if MARK in REF.sub("", text):
            raise ConfigError(f"{where}: {text!r} is not a cell reference; write ${{cells.ROW.checkpoint}} "
                              "(the row's final model) or ${cells.ROW.dir} (its run folder)")
        found += [m.group(1) for m in REF.finditer(text)]
    return list(dict.fromkeys(found))


def forbid_references(value: Any, where: str) -> None:
    """Only a row can refer to another row's cell (a study- or dataset-wide one would refer to
    itself in the row it names)."""
    if any(MARK in text for text in _strings(value)):
        raise ConfigError(f"{where} refers to a cell (${{cells...}}); only a row's options can, since every "
                          "row would then need itself: move it into the rows that need it")


def set_needs(rows: list[Any], raw: Mapping[str, Any], dataset_ids: list[str]) -> None:
    """Set each study row's ``needs`` (the rows its options refer to) and check them all: one
    line per mistake. ``raw`` is the study file, whose shared sections may hold no reference."""
    for key in ("model", "data", "train", "match"):
        forbid_references(raw.get(key), f"the study's {key}:")
    forbid_references(raw.get("datasets"), "datasets:")
    for row in rows:
        row.needs = references({k: getattr(row, k) for k in ROW_SECTIONS}, f"row {row.id}")
        if row.needs and row.match:
            raise ConfigError(f"row {row.id}: match: params sizes the model before the study runs, but the row "
                              f"needs row {row.needs[0]}'s cell; give the row its widths instead")
    check_needs({r.id: r.needs for r in rows}, {r.id: r.datasets for r in rows}, dataset_ids)


def check_needs(needs: Mapping[str, list[str]], datasets: Mapping[str, list[str] | None],
                all_datasets: list[str]) -> None:
    """Every reference names a row, there is no cycle, and a needed row runs on every dataset
    of the row that needs it (each mistake one line)."""
    ids = list(needs)
    for row, names in needs.items():
        for name in names:
            if name not in needs:
                raise ConfigError(unknown_name_message(f"row in row {row}'s ${{cells.ROW...}} reference:", name,
                                                       ids, "references name rows of the same study"))
    cycle = _cycle(needs)
    if cycle:
        raise ConfigError(f"rows need each other's cells in a cycle ({' -> '.join(cycle)}); a row can only use "
                          "cells of rows that do not need it")
    for row, names in needs.items():
        for name in names:
            missing = [d for d in (datasets[row] or all_datasets) if d not in (datasets[name] or all_datasets)]
            if missing:
                raise ConfigError(f"row {row} needs row {name}'s cell on dataset {missing[0]}, where row {name} "
                                  f"does not run; add {missing[0]} to row {name}'s datasets: or remove it from "
                                  f"row {row}'s")


def _cycle(needs: Mapping[str, list[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] (depth-first search, rows in order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(row: str) -> list[str]:
        state[row], found = 1, []
        path.append(row)
        for name in needs.get(row, []):
            if state.get(name) == 1:
                return path[path.index(name):] + [name]
            if name not in state and (found := visit(name)):
                return found
        path.pop()
        state[row] = 2
        return []

    for row in needs:
        if row not in state and (cycle := visit(row)):
            return cycle
    return []


def run_order(needs: Mapping[str, list[str]]) -> list[str]:
    """Rows in study order, except that a row comes after every row it needs."""
    done: list[str] = []

    def place(row: str) -> None:
        if row in done:
            return
        for name in needs.get(row, []):
            place(name)
        done.append(row)

    for row in needs:
        place(row)
    return done


def resolve(value: Any, cell_dirs: Mapping[str, Path]) -> Any:
    """``value`` with every reference replaced by the path of the named row's cell."""
    if isinstance(value, str):
        return REF.sub(lambda m: str(cell_dirs[m.group(1)] / CHECKPOINT if m.group(2) == "checkpoint"
                                     else cell_dirs[m.group(1)]), value)
    if isinstance(value, Mapping):
        return {k: resolve(v, cell_dirs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, cell_dirs) for v in value]
    return value


def components(keys: list[Any], needs: Mapping[Any, Iterable[Any]]) -> list[list[int]]:
    """Indices of ``keys`` grouped into the connected parts of the need graph, each group in
    ``keys`` order and the groups in order of their first member (the unit of a shard)."""
    index = {k: i for i, k in enumerate(keys)}
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key, needed in needs.items():
        for other in needed:
            if key in index and other in index:
                a, b = root(index[key]), root(index[other])
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
