"""Cost of the pyramid: parameters and training-step time, plain vs hierarchical, per family.

For every installed encoder family (2D): ``unet`` vs ``hunet`` and ``ae`` vs ``hae`` with
the same encoder; one training step = forward + loss (the pyramid loss for the
hierarchical models, through ``training_loss``) + backward. Also the time of the
pyramid loss alone against the plain criterion on the same outputs. Prints a markdown
table; nothing is asserted.

    python benchmarks/bench_pyramid.py [--size 64] [--batch 4] [--repeats 3] [--families cnn,swin] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench_model(arch: str, family: str, size: int, batch: int, repeats: int) -> tuple[int, float]:
    from flemme_core.build import build_model

    seg = arch in ("unet", "hunet")
    model = build_model({"arch": arch, "image_size": [size, size], "out_channels": 2 if seg else 1,
                         "encoder": {"name": family, "channels": [16, 32, 64, 128], "num_blocks": 1}})
    from flemme_core.training.profiling import count_parameters, timed_training_steps

    x = torch.rand(batch, 1, size, size)
    t = timed_training_steps(model, {"image": x, "label": (x > 0.5).long() if seg else x}, steps=repeats, warmup=1)
    return count_parameters(model), min(t.wall)  # the architecture's own default loss


def bench_loss(size: int, batch: int, repeats: int) -> tuple[float, float]:
    from flemme_pyramid.loss import PyramidLoss

    from flemme_core.losses import build_loss

    criterion = build_loss("dice_ce", 2, 2)
    outs = [torch.randn(batch, 2, size // 2 ** i, size // 2 ** i) for i in range(5)]
    y = torch.randint(0, 2, (batch, 1, size, size))
    pyramid = PyramidLoss(criterion)
    return _time(lambda: criterion(outs[0], y), repeats), _time(lambda: pyramid(outs, y), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default="", help="comma-separated (default: every installed 2D family)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from flemme_core.errors import FlemmeError
    from flemme_core.registry import get_registry

    families = args.families.split(",") if args.families else sorted(get_registry().components("encoder"))
    print(f"threads {torch.get_num_threads()}, {args.size}x{args.size}, batch {args.batch}, best of {args.repeats}\n")
    print("| family | plain | params | s/step | hierarchical | params | s/step | step time × |")
    print("|---|---|---|---|---|---|---|---|")
    for family in families:
        for plain, hier in (("unet", "hunet"), ("ae", "hae")):
            try:
                p_params, p_time = bench_model(plain, family, args.size, args.batch, args.repeats)
                h_params, h_time = bench_model(hier, family, args.size, args.batch, args.repeats)
            except FlemmeError as exc:  # e.g. a composite family that needs its branches named
                print(f"| {family} | {plain} | skipped: {str(exc)[:60]} | | | | | |")
                break
            print(f"| {family} | {plain} | {p_params:,} | {p_time:.3f} | {hier} | {h_params:,} | {h_time:.3f} | "
                  f"{h_time / p_time:.2f} |")
    plain_t, pyr_t = bench_loss(args.size, args.batch, args.repeats)
    print(f"\nloss alone (dice_ce, 5 outputs): plain {1e3 * plain_t:.2f} ms, pyramid {1e3 * pyr_t:.2f} ms")


if __name__ == "__main__":
    main()
