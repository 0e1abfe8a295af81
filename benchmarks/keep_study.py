"""Copy a finished study's report and its cells' small files into the repository.

Why: a study folder holds every cell's checkpoints (megabytes each) and lives outside git, so it
is lost with the machine; the cells' ``result.json`` (metrics per held-out item, timings, sizes)
with their configs are a few kB each and are all ``flemme compare --table-only`` needs to rebuild
the report, and all a later session needs to continue the study after re-running only the
cells it wants to change.

    python benchmarks/keep_study.py studies/which-encoder benchmarks/results/which-encoder
    flemme compare --table-only -o benchmarks/results/which-encoder
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from flemme_core.compare.cli import STUDY_FILE
from flemme_core.compare.measure import CELL_SPEC, RESULT, SUMMARY

STUDY_FILES = (STUDY_FILE, "report.md", "report.csv", "report.json")
# what --table-only reads (the cell's spec and result) and what a re-run checks before skipping it
CELL_FILES = (CELL_SPEC, RESULT, SUMMARY, "config.yaml", "state.json", "metrics.jsonl")


def keep(study: Path, dest: Path) -> int:
    """Copy the study's files and every measured cell's small files; returns the cells kept."""
    if not (study / STUDY_FILE).exists():
        raise SystemExit(f"error: {study} is not a study folder (no study.yaml); pass the folder of `flemme compare -o`")
    dest.mkdir(parents=True, exist_ok=True)
    for name in STUDY_FILES:
        if (study / name).exists():
            shutil.copy2(study / name, dest / name)
    kept = 0
    for result in sorted(study.glob(f"cells/**/{RESULT}")):
        cell = result.parent
        target = dest / cell.relative_to(study)
        target.mkdir(parents=True, exist_ok=True)
        for name in CELL_FILES:
            if (cell / name).exists():
                shutil.copy2(cell / name, target / name)
        kept += 1
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path, help="the study folder (flemme compare -o)")
    parser.add_argument("dest", type=Path, help="where to keep it, e.g. benchmarks/results/<study>")
    args = parser.parse_args(argv)
    print(f"kept {keep(args.study, args.dest)} cells in {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
