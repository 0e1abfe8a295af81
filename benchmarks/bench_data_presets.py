"""Load time and size of every dataset preset, and the time to the first training batch.

    python benchmarks/bench_data_presets.py [name ...]

Prints a table; presets whose optional package is missing are listed as unavailable.
"""

from __future__ import annotations

import sys
import time

from flemme_core.data import DataError, build_dataloaders, load_preset, preset_names


def shapes(items) -> str:
    s = sorted({tuple(i["image"].shape) for i in items})
    return ", ".join("x".join(map(str, x)) for x in s[:2]) + (" ..." if len(s) > 2 else "")


def main(names: list[str]) -> None:
    import monai.transforms  # noqa: F401
    import torch  # noqa: F401 - import once, outside the timings

    print(f"| {'preset':18} | train | held out | train shape (C,*S) | held-out shape | classes | load s | "
          "first batch s | MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names or preset_names():
        t0 = time.perf_counter()
        try:
            s = load_preset(name)
        except DataError as exc:
            print(f"| {name:18} | unavailable: {exc} |")
            continue
        load = time.perf_counter() - t0
        mb = sum(v.nbytes for i in s.train + s.held_out for v in i.values()) / 2**20
        t0 = time.perf_counter()
        bundle = build_dataloaders({"preset": name, "batch_size": 2}, seed=0)
        next(iter(bundle.train_loader))
        first = time.perf_counter() - t0
        print(f"| {name:18} | {len(s.train)} | {len(s.held_out)} | {shapes(s.train)} | {shapes(s.held_out)} | "
              f"{s.num_classes} | {load:.2f} | {first:.2f} | {mb:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
