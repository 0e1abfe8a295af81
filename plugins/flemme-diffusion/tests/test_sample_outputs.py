"""`flemme sample` output a researcher pastes into a report: a large labelled grid, and plain
progress lines (no carriage-return fragments) when stderr is a log file (issue 19)."""

from __future__ import annotations

from click.testing import CliRunner
from diffusion_helpers import tiny
from PIL import Image

from flemme_core.build import build_model
from flemme_core.checkpoint import save_model
from flemme_core.cli import main


def test_sample_grid_is_large_and_piped_progress_has_no_carriage_returns(tmp_path):
    path = tmp_path / "ddpm.safetensors"
    save_model(build_model(tiny("ddpm", size=16, timesteps=20)), path)
    result = CliRunner().invoke(main, ["sample", str(path), "-n", "3", "--steps", "3", "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "sampling 3 x [16, 16]" in result.output
    grid = Image.open(tmp_path / "s" / "grid.png")
    assert grid.size[0] >= 3 * 150 and grid.size[1] >= 150  # tiles of >= 1.6 in at 100 dpi, not 16 px
