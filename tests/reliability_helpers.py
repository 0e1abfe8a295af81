"""Shared pieces of the reliability tests (issue 20): a tiny quick run, the CLI in-process, the
"exactly one Error line" assertion, and fake installed distributions."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from train_helpers import TINY_2D, config

from flemme_core.cli import main


def quick(**train: Any) -> dict[str, Any]:
    """A 32x32 run of the tests' tiny family: 1 step unless ``train`` says otherwise."""
    return config(TINY_2D, model={"arch": "unet", "encoder": {"name": "tiny", "channels": [4, 8]}},
                  train={"steps": 1, "val_every": 0, **train},
                  data={"options": {"num_train": 2, "num_held_out": 1, "size": [32, 32]}, "patch_size": [32, 32],
                        "batch_size": 2})


def run(*args: Any) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result: Result, *needles: str) -> str:
    """The command failed with exactly one ``Error:`` line (the last on stderr) and no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [x for x in result.stderr.splitlines() if x.strip()]  # notes and progress may come first
    assert "Traceback" not in result.output and lines and lines[-1].startswith("Error: "), result.output
    assert sum(x.startswith("Error") for x in lines) == 1, result.output
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


class FakeDist:
    """Enough of importlib.metadata.Distribution for the registry."""

    def __init__(self, name: str, version: str, entry_points: dict[str, str]):
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = [EntryPoint(ep, value, "flemme") for ep, value in entry_points.items()]


def trained_folder(folder: Path, cfg: dict[str, Any]) -> Path:
    """Train ``cfg`` into ``folder/run`` (config at ``folder/cfg.yaml``) and write a 32x32 ``folder/img.png``."""
    import numpy as np
    from PIL import Image
    from train_helpers import write_config

    result = run("train", write_config(folder / "cfg.yaml", cfg), "-o", folder / "run", "-q")
    assert result.exit_code == 0, result.output
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(folder / "img.png")
    return folder
