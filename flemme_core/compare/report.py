"""The study's report from its cells' ``result.json``: Markdown (aligned, so it reads the
same printed in a terminal and pasted into a README), CSV, JSON and the Pareto PNG.

Per row and dataset: mean ± std over seeds of the task's metrics (Dice per class and mean,
HD95; PSNR, SSIM), parameters, MACs per sample, training seconds per step and in all,
inference ms per image at 1 thread, peak memory; and the paired comparison with the row's
baseline (:mod:`.stats`). numpy only: ``--table-only`` needs no torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..training.logs import json_safe
from .stats import mean_std, paired_comparison

#: summary metrics per task, in table order (per-class Dice is added between dice and hd95)
TASK_COLUMNS = {"segmentation": ["dice", "hd95"], "reconstruction": ["psnr", "ssim"]}
PRIMARY = {"segmentation": "dice", "reconstruction": "psnr"}
LOWER_IS_BETTER = ("hd95", "mse", "loss")
MAX_CLASS_COLUMNS = 6
COST_KEYS = ["parameters", "macs", "s_per_step", "train_seconds", "steps_trained", "infer_ms", "peak_memory_mb"]


def higher_is_better(metric: str) -> bool:
    return not metric.split("/")[0].startswith(LOWER_IS_BETTER)


def summarize(results: list[dict[str, Any]], rows: list[str], datasets: list[str],
              metric: str | None = None, resamples: int = 10000) -> list[dict[str, Any]]:
    """One entry per (dataset, row) that has results, in study order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["row"]), []).append(r)
    out = []
    for ds in datasets:
        for row in rows:
            group = sorted(groups.get((ds, row), []), key=lambda r: r["seed"])
            if not group:
                continue
            task = group[0]["task"]
            keys = sorted({k for r in group for k in r["metrics"]})
            metrics = {k: dict(zip(("mean", "std", "n"), mean_std([r["metrics"].get(k) for r in group])))
                       for k in keys}
            for k in keys:
                metrics[k]["values"] = [r["metrics"].get(k) for r in group]
            cost = {"parameters": group[0]["parameters"], "macs": group[0]["macs"],
                    "s_per_step": _mean([r["train"].get("seconds_per_step") for r in group]),
                    "train_seconds": _mean([r["train"].get("train_seconds") for r in group]),
                    "steps_trained": _mean([r["train"].get("steps_trained") for r in group]),
                    "infer_ms": _mean([r.get("infer_ms") for r in group]),
                    "peak_memory_mb": _max([r.get("peak_memory_mb") for r in group])}
            primary = metric or PRIMARY.get(task, keys[0] if keys else "")
            entry = {"dataset": ds, "row": row, "task": task, "seeds": [r["seed"] for r in group],
                     "baseline": group[0]["baseline"], "metric": primary, "metrics": metrics, **cost,
                     "classes": group[0].get("classes", []), "held_out": group[0].get("held_out"),
                     "stopped_by": sorted({r["train"].get("stopped_by") or "steps" for r in group})}
            base = groups.get((ds, entry["baseline"]), [])
            if row != entry["baseline"] and base:
                entry["paired"] = paired_comparison(_per_item(group, primary), _per_item(base, primary),
                                                    higher_is_better(primary), resamples=resamples)
            out.append(entry)
    return out


def _per_item(group: list[dict[str, Any]], metric: str) -> dict[int, list[float]]:
    return {r["seed"]: [_num(item.get(metric)) for item in r.get("per_item", [])] for r in group}


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _mean(values: list[Any]) -> float | None:
    m, _, n = mean_std(values)
    return m if n else None


def _max(values: list[Any]) -> float | None:
    finite = [v for v in values if v is not None]
    return max(finite) if finite else None


# -- formatting ----------------------------------------------------------------------------------
def _columns(entries: list[dict[str, Any]]) -> list[str]:
    task = entries[0]["task"]
    base = TASK_COLUMNS.get(task, sorted(entries[0]["metrics"])[:3])
    classes = sorted({k for e in entries for k in e["metrics"] if k.startswith("dice/")},
                     key=lambda k: next((i for i, c in enumerate(entries[0]["classes"]) if k.endswith(c)), 99))
    if task == "segmentation" and 1 < len(classes) <= MAX_CLASS_COLUMNS:
        return [base[0], *classes, *base[1:]]
    return base


def _ms(m: dict[str, Any] | None, digits: int) -> str:
    if not m or not m.get("n"):
        return "—"
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def _digits(metric: str) -> int:
    return 2 if metric.split("/")[0] in ("hd95", "psnr") else 3


def _si(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _num_cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _paired_cell(e: dict[str, Any]) -> tuple[str, str]:
    p = e.get("paired")
    if e["row"] == e["baseline"]:
        return "baseline", ""
    if not p:
        return "—", "—"
    d = _digits(e["metric"]) + 1
    return f"{p['diff']:+.{d}f} [{p['low']:+.{d}f}, {p['high']:+.{d}f}]", f"{p['better_seeds']}/{p['seeds']}"


def markdown_table(entries: list[dict[str, Any]]) -> str:
    cols = _columns(entries)
    metric = entries[0]["metric"]
    head = ["row", "seeds", *cols, f"Δ item {metric} vs baseline [95% CI]", "better", "params", "MACs/sample",
            "train s/step", "train s", "infer ms", "peak MB"]
    lines = []
    for e in entries:
        diff, better = _paired_cell(e)
        lines.append([e["row"], str(len(e["seeds"])), *[_ms(e["metrics"].get(c), _digits(c)) for c in cols],
                      diff, better, _si(e["parameters"]), _si(e["macs"]), _num_cell(e["s_per_step"], ".3f"),
                      _num_cell(e["train_seconds"], ".1f" if (e["train_seconds"] or 0) < 100 else ".0f"), _num_cell(e["infer_ms"], ".1f"),
                      _num_cell(e["peak_memory_mb"], ".0f")])
    return _aligned(head, lines)


def _aligned(head: list[str], lines: list[list[str]]) -> str:
    """A Markdown table padded so its columns line up in a terminal too (first column left)."""
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                          for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(head), rule, *(fmt(r) for r in lines)])


def summary_table(entries: list[dict[str, Any]], row_order: list[str] | None = None) -> str:
    """Rows x datasets at a glance: the primary metric (mean ± std over seeds; the best mean of
    each dataset in bold), then the steps trained and the parameters of that cell. Rows in
    ``row_order`` (the study's), whichever dataset they first appear in."""
    datasets = list(dict.fromkeys(e["dataset"] for e in entries))
    rows = list(dict.fromkeys(e["row"] for e in entries))
    if row_order:
        rows.sort(key=lambda r: row_order.index(r) if r in row_order else len(row_order))
    by = {(e["dataset"], e["row"]): e for e in entries}
    best = {}
    for ds in datasets:
        scored = [e for e in entries if e["dataset"] == ds and (e["metrics"].get(e["metric"]) or {}).get("n")]
        if scored:
            sign = 1 if higher_is_better(scored[0]["metric"]) else -1
            best[ds] = max(scored, key=lambda e: sign * e["metrics"][e["metric"]]["mean"])["row"]
    lines = []
    for row in rows:
        cells = [row]
        for ds in datasets:
            e = by.get((ds, row))
            if e is None:
                cells.append("—")
                continue
            value = _ms(e["metrics"].get(e["metric"]), _digits(e["metric"]))
            value = f"**{value}**" if best.get(ds) == row else value
            steps = "—" if e["steps_trained"] is None else f"{e['steps_trained']:.0f}"
            cells.append(f"{value} · {steps} steps · {_si(e['parameters'])}")
        lines.append(cells)
    metric = entries[0]["metric"]
    return _aligned(["row", *(f"{ds}: {metric} · steps · params" for ds in datasets)], lines)


def markdown(study: dict[str, Any], entries: list[dict[str, Any]], missing: list[str]) -> str:
    budget = study.get("budget_text", "")
    out = [f"## Study {study['name']}", "",
           (f"Budget per cell: {budget or 'train.steps'}; seeds {', '.join(map(str, study['seeds']))}; "
           f"baseline {study['baseline']}. Metrics: mean ± std over seeds of the held-out metric (pooled over "
           "the held-out items, as `flemme eval` reports it); Δ: paired difference with the baseline of each "
           "held-out item's own metric over the same seeds and items (so on a few items its sign can differ "
           "from that of the pooled means), with a 95% hierarchical bootstrap interval (seeds, then items); "
           "better: seeds in which the row's per-item mean is better. MACs per sample: one "
           "forward of one training patch (torch.utils.flop_counter; custom kernels such as mamba's scan are "
           "not counted). infer ms: one whole held-out image at 1 thread. peak MB: peak memory of the cell's "
           "process (RSS on CPU, allocated on CUDA).")]
    if len({e["dataset"] for e in entries}) > 1:
        out += ["", "### Summary", "", summary_table(entries, [r.get("name") for r in study.get("rows", [])])]
    for ds in dict.fromkeys(e["dataset"] for e in entries):
        group = [e for e in entries if e["dataset"] == ds]
        out += ["", f"### {ds}", "", f"Held out: {group[0]['held_out']}.", "", markdown_table(group)]
    if missing:
        out += ["", f"{len(missing)} cell(s) not finished: " + ", ".join(missing[:12]) +
                (" …" if len(missing) > 12 else "")]
    return "\n".join(out) + "\n"


def csv_text(entries: list[dict[str, Any]]) -> str:
    metric_keys = sorted({k for e in entries for k in e["metrics"]})
    head = (["dataset", "row", "seeds"] + [f"{k}_{s}" for k in metric_keys for s in ("mean", "std")] + COST_KEYS +
            ["baseline", "paired_metric", "paired_diff", "paired_low", "paired_high", "better_seeds"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for e in entries:
        p = e.get("paired") or {}
        values = [e["dataset"], e["row"], len(e["seeds"])]
        for k in metric_keys:
            m = e["metrics"].get(k, {})
            values += [_csv(m.get("mean")), _csv(m.get("std"))]
        values += [_csv(e[k]) for k in COST_KEYS]
        values += [e["baseline"], e["metric"], _csv(p.get("diff")), _csv(p.get("low")), _csv(p.get("high")),
                   p.get("better_seeds", "")]
        writer.writerow(values)
    return buf.getvalue()


def _csv(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def write_report(study_dir: Path, study: dict[str, Any], entries: list[dict[str, Any]],
                 missing: list[str]) -> dict[str, Path]:
    """report.md, report.csv, report.json and report.png (when matplotlib is there), atomically."""
    from ..checkpoint import atomic_write

    text = markdown(study, entries, missing)
    files = {"report.md": text, "report.csv": csv_text(entries),
             "report.json": json.dumps(json_safe({"study": study, "entries": entries, "missing": missing}), indent=1)}
    written = {}
    for name, content in files.items():
        atomic_write(study_dir / name, lambda tmp, c=content: Path(tmp).write_text(c))
        written[name] = study_dir / name
    try:
        from .plot import pareto_plot
    except ImportError:
        return written
    if entries:
        atomic_write(study_dir / "report.png", lambda tmp: pareto_plot(entries, tmp))
        written["report.png"] = study_dir / "report.png"
    return written
