"""CPU inference of exported models: ONNX Runtime against eager PyTorch, side by side.

    python benchmarks/bench_export.py                        # cnn, swin, mamba unet; 3D MNI152 + 2D 512²
    python benchmarks/bench_export.py --families cnn --cases 2d --repeats 5
    python benchmarks/bench_export.py --families mamba --cases 2d --threads 1 --portable   # the Scan graph

For each family (``unet``, untrained weights: speed and agreement do not depend on
training) and case, the model is saved as a checkpoint, exported with ``flemme export``
(ONNX, verified) and then both the eager model and the ONNX file run the same whole-image
inference of ``flemme predict`` (MONAI sliding window, Gaussian blending, overlap 0.25):

* 3D: the MNI152 2009a T1 template at 2 mm (99×117×95, nilearn), patch 64×48×64 (the
  demo config's), sliding-window batch 2;
* 2D: the stardist nuclei test image (512×512), patch 128×128, sliding-window batch 4.

Timings are the median of ``--repeats`` runs after one warm-up, at 1 and 2 CPU threads
(torch.set_num_threads for eager; intra-op threads for ONNX Runtime), the two
alternating so that a busy machine slows both alike. The table also gives the largest
difference between the two whole-image outputs relative to the largest eager logit,
and the file sizes (safetensors checkpoint vs ONNX). Ratio = ONNX Runtime / eager
(< 1: ONNX Runtime faster). The export is ``flemme export``'s default (plugins' fused custom
ops, e.g. mamba's ``flemme.mamba::SelectiveScan``; column "graph") or, with ``--portable``,
standard operators only (mamba's scan as an ONNX ``Scan``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FAMILIES = {  # the demo's widths and stem for every family; the family's own defaults otherwise
    "cnn": {"name": "cnn", "channels": [16, 32, 64, 128], "patch_size": 2, "block": "conv", "norm": "instance"},
    "swin": {"name": "swin", "channels": [16, 32, 64, 128], "patch_size": 2},
    "mamba": {"name": "mamba", "channels": [16, 32, 64, 128], "patch_size": 2},
}
CASES = {"3d": {"patch": [64, 48, 64], "sw_batch_size": 2}, "2d": {"patch": [128, 128], "sw_batch_size": 4}}


def load_image(case: str) -> np.ndarray:
    """(1, *S) float32, intensities normalised as the presets do."""
    if case == "3d":
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

        img = load_mni152_template(resolution=2).get_fdata().astype(np.float32)
        mask = load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
        img = (img - img[mask].mean()) / img[mask].std()
    else:
        from stardist.data import test_image_nuclei_2d

        img = test_image_nuclei_2d().astype(np.float32)
        lo, hi = np.percentile(img, [1, 99.8])
        img = (img - lo) / (hi - lo)
    return img[None].astype(np.float32)


def seconds(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_one(family: str, case: str, threads: list[int], repeats: int, folder: Path,
              portable: bool = False) -> list[dict]:
    from flemme_core import build_model, save_model
    from flemme_core.export.exporter import export_checkpoint
    from flemme_core.export.runtime import ExportedModel
    from flemme_core.training.evaluation import EvalSettings, infer

    spec = CASES[case]
    torch.manual_seed(0)
    model = build_model({"arch": "unet", "encoder": FAMILIES[family], "image_size": spec["patch"],
                         "in_channels": 1, "out_channels": 4}).eval()
    sw = {"sw_batch_size": spec["sw_batch_size"], "overlap": 0.25, "mode": "gaussian"}
    ckpt = save_model(model, folder / f"{family}-{case}.safetensors", extra={"roi_size": spec["patch"], "sw": sw})
    onnx_path = folder / f"{family}-{case}.onnx"
    torch.set_num_threads(2)
    start = time.perf_counter()
    meta = export_checkpoint(ckpt, onnx_path, "onnx", portable=portable)
    graph = "+".join(meta["custom_domains"]) or "standard ops"
    export_s = time.perf_counter() - start
    x = torch.from_numpy(load_image(case))[None]
    settings = EvalSettings(task="segmentation", metrics=[], roi_size=spec["patch"],
                            sw_batch_size=spec["sw_batch_size"], overlap=0.25, sw_mode="gaussian")
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        exported = ExportedModel(onnx_path, "cpu", threads=n)
        def run_eager():
            return infer(model, x, settings)

        def run_ort(exported=exported):
            return infer(exported, x, settings)

        run_eager(), run_ort()  # warm-up: ONNX Runtime allocates its arena, torch its caches
        eager_s, ort_s = [], []
        for _ in range(max(1, repeats)):  # alternate: one of each per round
            t, eager_out = seconds(run_eager)
            eager_s.append(t)
            t, ort_out = seconds(run_ort)
            ort_s.append(t)
        rel = float((ort_out - eager_out).abs().max() / eager_out.abs().max())
        rows.append({"family": family, "case": case, "threads": n, "eager_s": statistics.median(eager_s),
                     "ort_s": statistics.median(ort_s), "rel": rel, "spatial": meta["input"]["spatial"],
                     "ckpt_mb": ckpt.stat().st_size / 2**20, "onnx_mb": onnx_path.stat().st_size / 2**20,
                     "export_s": export_s, "input": "×".join(map(str, x.shape[2:])), "graph": graph})
        r = rows[-1]
        print(f"# {family} {case} {n} threads ({graph}; export {export_s:.0f} s): eager {r['eager_s']:.3f} s, "
              f"ORT {r['ort_s']:.3f} s, ratio {r['ort_s'] / r['eager_s']:.2f}, rel {rel:.1e}", file=sys.stderr,
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="cnn,swin,mamba")
    parser.add_argument("--cases", default="3d,2d")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--portable", action="store_true", help="export standard ONNX operators only")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            for family in args.families.split(","):
                rows += bench_one(family, case, threads, args.repeats, Path(tmp), args.portable)
    print("| family | input (patch) | threads | eager s | ONNX Runtime s | ratio | max rel. diff | "
          "spatial axes | graph | checkpoint MB | ONNX MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        patch = "×".join(map(str, CASES[r["case"]]["patch"]))
        print(f"| {r['family']} | {r['input']} ({patch}) | {r['threads']} | {r['eager_s']:.3f} | {r['ort_s']:.3f} | "
              f"{r['ort_s'] / r['eager_s']:.2f} | {r['rel']:.1e} | {r['spatial']} | {r['graph']} | {r['ckpt_mb']:.2f} | "
              f"{r['onnx_mb']:.2f} |")


if __name__ == "__main__":
    main()
