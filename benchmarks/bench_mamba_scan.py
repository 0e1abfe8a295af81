"""Benchmark of flemme-mamba's CPU selective scan (not a test: prints markdown tables).

1. The scan at B=2, D=192, N=16 and L = 1024, 4096, 16384 (fp32, Mamba's dt init):
   the C++ kernel (``cpp``), the pure-PyTorch chunked fallback (``torch``) and a naive
   PyTorch loop over time with autograd (``naive``): forward, backward, peak memory
   (resident-set growth of a fresh process) and the naive/cpp ratio. The float64
   sequential reference checks the kernel's error at a small L.
2. One training step (AdamW) of mamba+unet against cnn+unet with about as many
   parameters, 2D 128² and 3D 64³.

Every measurement runs in its own subprocess (clean peak memory, no cross-talk).

    python benchmarks/bench_mamba_scan.py                 # everything
    python benchmarks/bench_mamba_scan.py --only scan --lengths 1024 4096 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

SCAN_VARIANTS = ("cpp", "torch", "naive", "ssd")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scan_inputs(length: int, batch: int = 2, channels: int = 192, d_state: int = 16, dtype=None):
    import math

    import torch

    g = torch.Generator().manual_seed(0)
    dtype = dtype or torch.float32
    dt = torch.exp(torch.rand(channels, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    tensors = {
        "u": torch.randn(batch, channels, length, generator=g),
        "delta": 0.3 * torch.randn(batch, channels, length, generator=g),
        "A": -torch.arange(1, d_state + 1.0).repeat(channels, 1),
        "B": torch.randn(batch, 1, d_state, length, generator=g),
        "C": torch.randn(batch, 1, d_state, length, generator=g),
        "D": torch.ones(channels),
        "z": torch.randn(batch, channels, length, generator=g),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    return {k: v.to(dtype).requires_grad_() for k, v in tensors.items()}


def ssd_as_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, head_dim: int = 16):
    """Mamba-2's SSD on the same problem size: D channels as D/16 heads of 16 with one
    scalar decay per head (a different, cheaper model than Mamba-1's A per channel and
    state; timed for the trade-off, not as the same computation)."""
    import torch.nn.functional as F
    from flemme_mamba.ssd import ssd_scan

    b, d, length = u.shape
    h = d // head_dim
    dt = F.softplus(delta.reshape(b, h, head_dim, length).mean(2) + delta_bias.reshape(h, head_dim).mean(1)[:, None])
    x = u.reshape(b, 1, h, head_dim, length).transpose(-1, -2)
    y = ssd_scan(x, dt[:, None], A[::head_dim, 0][None], B.transpose(-1, -2), C.transpose(-1, -2),
                 D[::head_dim][None])
    return y.transpose(-1, -2).reshape(b, d, length) * F.silu(z)


def run_scan(variant: str, length: int, repeats: int) -> dict:
    """Child process: time forward and backward of one scan variant."""
    import torch
    from flemme_mamba.scan.cpu import selective_scan_cpp
    from flemme_mamba.scan.reference import selective_scan_ref
    from flemme_mamba.scan.torch_scan import selective_scan_torch

    fn = {"cpp": selective_scan_cpp, "torch": selective_scan_torch, "naive": selective_scan_ref,
          "ssd": ssd_as_selective_scan}[variant]
    inputs = scan_inputs(length)
    grad = torch.randn(inputs["u"].shape)
    if variant == "cpp":  # build / load the kernel outside the timings
        from flemme_mamba.scan.build import load_kernel

        load_kernel()
    fwd, bwd = [], []
    base = _rss_mb()
    for i in range(repeats + 1):
        for t in inputs.values():
            t.grad = None
        t0 = time.perf_counter()
        out = fn(**inputs, delta_softplus=True)
        t1 = time.perf_counter()
        out.backward(grad)
        t2 = time.perf_counter()
        if i:  # the first run warms up allocators and caches
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        del out
    fwd.sort()
    bwd.sort()
    return {"fwd": fwd[len(fwd) // 2], "bwd": bwd[len(bwd) // 2], "peak_mb": _peak_mb() - base}


def run_build() -> dict:
    """Child process: cold build of the C++ kernel into an empty cache."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FLEMME_MAMBA_CACHE"] = tmp
        from flemme_mamba.scan import build

        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        problem = build.kernel_problem()
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"wall": time.perf_counter() - t0, "cpu": (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime),
                "problem": problem}


def run_accuracy(length: int) -> dict:
    """Child process: max relative error of the kernel vs the float64 reference (output and grads)."""
    import torch
    from flemme_mamba.scan.cpu import selective_scan_cpp
    from flemme_mamba.scan.reference import selective_scan_ref

    x32 = scan_inputs(length, channels=32)
    x64 = {k: v.detach().double().requires_grad_() for k, v in x32.items()}
    grad = torch.randn(x32["u"].shape, dtype=torch.float64)
    out32 = selective_scan_cpp(**x32, delta_softplus=True)
    out32.backward(grad.float())
    out64 = selective_scan_ref(**x64, delta_softplus=True)
    out64.backward(grad)

    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    errs = {"out": rel(out32, out64)}
    errs.update({f"d{k}": rel(x32[k].grad, x64[k].grad) for k in x32})
    return errs


def run_train(family: str, dims: int, size: int, batch: int, steps: int, width: float) -> dict:
    """Child process: seconds per AdamW training step of ``family`` + unet (``mamba2``: the
    mamba family with ``ssm: mamba2``)."""
    import torch

    from flemme_core import build_model

    channels = [max(4, round(c * width)) for c in (32, 64, 128, 256)]
    encoder = {"name": "mamba", "ssm": "mamba2"} if family == "mamba2" else {"name": family}
    model = build_model({"arch": "unet", "dims": dims, "image_size": size, "in_channels": 1, "out_channels": 2,
                         "encoder": {**encoder, "channels": channels}})
    from flemme_core.training.profiling import count_parameters, timed_training_steps

    data = {"image": torch.randn(batch, 1, *[size] * dims),
            "label": torch.randint(0, 2, (batch, 1, *[size] * dims)).float()}

    def bce(out, y):
        return torch.nn.functional.binary_cross_entropy_with_logits(out[:, :1], y)

    base = _rss_mb()
    t = timed_training_steps(model, data, criterion=bce, steps=steps, warmup=1, lr=1e-4)
    return {"step": t.median_wall, "params": count_parameters(model),
            "channels": channels, "backend": getattr(model.encoder, "backend", ""), "peak_mb": _peak_mb() - base}


def child(args: list[str], threads: int, timeout: float) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", json.dumps(args), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matched_cnn_width(target: int, dims: int) -> float:
    """Width multiplier of the cnn channels giving about ``target`` parameters."""
    from flemme_core import build_model

    lo, hi = 0.25, 8.0
    for _ in range(30):
        mid = (lo * hi) ** 0.5
        ch = [max(4, round(c * mid)) for c in (32, 64, 128, 256)]
        m = build_model({"arch": "unet", "dims": dims, "image_size": 64, "encoder": {"name": "cnn", "channels": ch}})
        n = sum(p.numel() for p in m.parameters())
        lo, hi = (mid, hi) if n < target else (lo, mid)
    return (lo * hi) ** 0.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["scan", "train"], default=None)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", choices=SCAN_VARIANTS, default=list(SCAN_VARIANTS))
    p.add_argument("--naive-max-length", type=int, default=16384, help="skip the naive loop above this L")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, *rest = json.loads(args.child)
        result = {"scan": run_scan, "accuracy": run_accuracy, "train": run_train, "build": run_build}[kind](*rest)
        print(json.dumps(result))
        return

    print(f"<!-- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f} -->")
    if args.only in (None, "scan"):
        print(f"\n**Selective scan, fwd+bwd, B=2, D=192, N=16, fp32, {args.threads} thread{'s' if args.threads > 1 else ''}** (seconds, median of "
              f"{args.repeats}; peak = resident-memory growth)\n")
        print("| L | variant | forward s | backward s | fwd+bwd s | peak MB | naive / this |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for length in args.lengths:
            rows = {}
            for variant in args.variants:
                if variant == "naive" and length > args.naive_max_length:
                    continue
                rows[variant] = child(["scan", variant, length, args.repeats], args.threads, args.timeout)
            naive = rows.get("naive")
            for variant, r in rows.items():
                if not r or "timeout" in r:
                    print(f"| {length} | {variant} | {'timeout' if r else 'failed'} | | | | |")
                    continue
                total = r["fwd"] + r["bwd"]
                ratio = (f"{(naive['fwd'] + naive['bwd']) / total:.1f}×"
                         if naive and "fwd" in naive else "")
                print(f"| {length} | {variant} | {r['fwd']:.3f} | {r['bwd']:.3f} | {total:.3f} | "
                      f"{r['peak_mb']:.0f} | {ratio} |")
        built = child(["build"], args.threads, args.timeout)
        if built:
            print(f"\nCold build of the C++ kernel (empty cache): {built['wall']:.1f} s wall, "
                  f"{built['cpu']:.1f} s compiler CPU{' — FAILED: ' + built['problem'] if built['problem'] else ''}")
        acc = child(["accuracy", 512], args.threads, args.timeout)
        if acc:
            worst = max(acc, key=acc.get)
            print(f"\nC++ kernel vs float64 sequential reference (L=512, D=32): max relative error "
                  f"{acc[worst]:.1e} (worst: {worst}; output {acc['out']:.1e})")
    if args.only in (None, "train"):
        print(f"\n**One AdamW training step, unet, batch 2 (2D) / 1 (3D), {args.threads} threads**\n")
        print("| input | encoder | channels | parameters | s / step | peak MB |")
        print("|---|---|---|---:|---:|---:|")
        for dims, size, batch in [(2, 128, 2), (3, 64, 1)]:
            mamba = child(["train", "mamba", dims, size, batch, 2, 1.0], args.threads, args.timeout)
            width = matched_cnn_width(mamba["params"], dims) if mamba and "params" in mamba else 1.0
            cnn = child(["train", "cnn", dims, size, batch, 2, width], args.threads, args.timeout)
            mamba2 = child(["train", "mamba2", dims, size, batch, 2, 1.0], args.threads, args.timeout)
            shape = "×".join([str(size)] * dims)
            for name, r in [("mamba", mamba), ("mamba (ssm: mamba2)", mamba2), ("cnn", cnn)]:
                if not r or "timeout" in r:
                    print(f"| {shape} | {name} | | | {'timeout' if r else 'failed'} | |")
                    continue
                print(f"| {shape} | {name} | {r['channels']} | {r['params']:,} | {r['step']:.2f} | "
                      f"{r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
