"""The study files the READMEs tell users to run: each loads and plans (names registered, keys
known), and the 2D equal-steps study reuses the identity-mixer study's cells as its comment says."""

from __future__ import annotations

from pathlib import Path

import pytest

from flemme_core.compare.cells import plan
from flemme_core.compare.study import load_study

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("benchmarks/studies/*.yaml"), *ROOT.glob("plugins/*/experiments/*.yaml")])


def test_the_shipped_studies_are_found():
    names = {p.stem for p in SHIPPED}
    assert {"which-encoder", "mixer-equal-steps", "which-encoder-steps-2d", "pyramid-seg", "mmfd"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_shipped_study_plans(path, tmp_path):
    planned = plan(load_study(str(path)), tmp_path / "study", check_models=False)
    assert planned and len({p.cell.path for p in planned}) == len(planned)


def test_the_2d_steps_study_reuses_the_mixer_study_cells(tmp_path):
    """A cell is matched by its run config: every cell of mixer-equal-steps must be the same cell
    (same folder, same config) in which-encoder-steps-2d, or running both into one folder fails."""
    def cells(name):
        return {p.cell.path: p.spec["run"] for p in plan(load_study(str(ROOT / f"benchmarks/studies/{name}.yaml")),
                                                         tmp_path, check_models=False)}

    mixer, steps_2d = cells("mixer-equal-steps"), cells("which-encoder-steps-2d")
    assert len(mixer) == 42 and set(mixer) < set(steps_2d)
    assert all(steps_2d[path] == run for path, run in mixer.items())
