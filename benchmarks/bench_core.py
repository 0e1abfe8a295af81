"""flemme-core benchmark: start-up of the CLI, and a training step of cnn+unet against MONAI's
BasicUNet and UNet at matched widths (CPU). Prints a markdown table with ratios.

Each configuration runs in a fresh subprocess (so peak RSS is its own) and the pairs are
interleaved; the figure is the median step time after warm-up.

    python benchmarks/bench_core.py [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CASES = {
    # name: (dims, size, batch, builder)
    "2d": (2, 256, 4),
    "3d": (3, 64, 1),
}


def _flemme(kind: str, dims: int):
    from flemme_core import build_model

    if kind == "flemme-basic":  # BasicUNet's topology: max-pool down, two convs per level, deconv up
        enc = {"name": "cnn", "channels": [32, 32, 64, 128, 256], "block": "double_conv", "down": "pool", "patch_size": 1,
               "norm": "instance", "act": "leakyrelu"}
    else:  # MONAI UNet's: strided-conv down, residual units, first level already at stride 2
        enc = {"name": "cnn", "channels": [32, 64, 128, 256], "block": "res_conv", "down": "conv",
               "norm": "instance", "act": "prelu", "patch_size": 2}
    size = CASES["2d" if dims == 2 else "3d"][1]
    return build_model({"arch": "unet", "encoder": enc, "dims": dims, "image_size": size, "out_channels": 2})


def _monai(kind: str, dims: int):
    from monai.networks.nets import BasicUNet, UNet

    if kind == "monai-basic":
        return BasicUNet(spatial_dims=dims, in_channels=1, out_channels=2, features=(32, 32, 64, 128, 256, 32))
    return UNet(spatial_dims=dims, in_channels=1, out_channels=2, channels=(32, 64, 128, 256),
                strides=(2, 2, 2), num_res_units=2, norm="instance")


def worker(kind: str, case: str, steps: int, threads: int) -> dict:

    import torch

    from flemme_core.training.profiling import count_parameters, timed_training_steps

    torch.manual_seed(0)
    dims, size, batch = CASES[case]
    model = _flemme(kind, dims) if kind.startswith("flemme") else _monai(kind, dims)
    data = {"image": torch.randn(batch, 1, *[size] * dims), "label": torch.randint(0, 2, (batch, *[size] * dims))}
    # the same loss for both sides (cross-entropy on the same labels); the first step warms up
    t = timed_training_steps(model, data, criterion=torch.nn.functional.cross_entropy, steps=steps, warmup=1,
                             threads=threads)
    return {"time": t.median_wall, "params": count_parameters(model), "rss_mb": t.peak_rss_mb}


def startup(args: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flemme_core", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=2)
    parser.add_argument("--pairs", default="basic,res", help="which pairs to run (basic: BasicUNet, res: UNet)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps, args.threads)))
        return

    def run(kind, case):
        out = subprocess.run([sys.executable, __file__, "--worker", kind, case, "--steps", str(args.steps),
                              "--threads", str(args.threads)], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"## flemme-core benchmark (CPU, {args.threads} threads, median of {args.steps} steps)\n")
    print("| start-up | seconds |\n|---|---|")
    print(f"| `flemme --help` | {startup(['--help']):.3f} |")
    print(f"| `flemme list` (all installed plugins) | {startup(['list']):.3f} |")
    print(f"| `python -c 'import torch'` (reference) | "
          f"{statistics.median([_time_cmd(['-c', 'import torch']) for _ in range(3)]):.3f} |\n")
    print("| case | flemme | peer | params flemme / peer | s/step flemme / peer | time ratio | "
          "peak RSS MB flemme / peer | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for case, (dims, size, batch) in CASES.items():
        label = f"{dims}D {size}^{dims} batch {batch}"
        pairs = {"basic": ("flemme-basic", "monai-basic"), "res": ("flemme-res", "monai-unet")}
        for ours, peer in (pairs[p] for p in args.pairs.split(",")):
            a, b = run(ours, case), run(peer, case)
            peer_name = "BasicUNet" if peer == "monai-basic" else "UNet(res units 2)"
            print(f"| {label} | cnn+unet ({ours.split('-')[1]}) | {peer_name} | {a['params']:,} / {b['params']:,} | "
                  f"{a['time']:.3f} / {b['time']:.3f} | {a['time'] / b['time']:.2f} | "
                  f"{a['rss_mb']:.0f} / {b['rss_mb']:.0f} | {a['rss_mb'] / b['rss_mb']:.2f} |")


def _time_cmd(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
