"""Training-step time and peak memory on CPU: flemme-vit (`vit`/`swin` + `unet`) vs MONAI's
UNETR / SwinUNETR at matched parameter counts (±10%). Not a test: prints markdown tables.

    python benchmarks/bench_vit.py                 # the four pairs, then the component table
    python benchmarks/bench_vit.py --only 2d       # just the 2D pairs
    python benchmarks/bench_vit.py --threads 2     # wall-clock on two threads (needs an idle machine)

Time: a step is forward, cross-entropy, backward and an AdamW update; the first step is
not timed, we take the median of ``--steps``. We report the process CPU time per step
(``time.process_time``) and the wall-clock time. With one thread (the default) CPU time
equals the wall time on an idle core and stays valid when other jobs share the machine;
the ratio uses it. Models of a pair alternate over ``--rounds`` rounds; each keeps its best.

Memory: every (pair, model) runs in a fresh subprocess and we read
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set size; tracemalloc does
not see torch's allocations): "step MiB" is the peak during training minus the peak after
building the model and its batch (activations, gradients, optimizer state); the ratio
uses it. It comes from a separate run with ``MALLOC_MMAP_THRESHOLD_=131072``, so that
freed tensors leave the process at once and the peak is that of live memory (with glibc's
default, heap reuse makes it vary by ±15% from run to run; that figure is shown too, from
the timing runs, best of the rounds). The whole-process peak is shown as well.

Needs einops (MONAI's UNETR and SwinUNETR import it): ``pip install einops``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_UNETR = ("UNETR", {"feature_size": 16, "hidden_size": 384, "mlp_dim": 1536, "num_heads": 6})
_SWIN_UNETR = ("SwinUNETR", {"feature_size": 24})


def _vit(num_blocks: list[int]) -> dict:
    """Our side of a UNETR pair; only the depth per level differs between 2D and 3D."""
    return {"name": "vit", "channels": [32, 64, 128, 256, 512], "num_blocks": num_blocks, "patch_size": 4}


def _swin(num_blocks: list[int]) -> dict:
    """Our side of a SwinUNETR pair (its widths 24..384); only the depth per level differs between 2D and 3D."""
    return {"name": "swin", "channels": [24, 48, 96, 192, 384], "num_blocks": num_blocks, "patch_size": 2,
            "head_dim": 24}


PAIRS = {
    # name: (dims, size, batch, ours (encoder spec), MONAI (class, kwargs)). Ours mirror the MONAI
    # models' level widths where they can (SwinUNETR: 24..384 over five levels) and put depth where
    # tokens are few, as Swin does; parameter counts within ±10% (printed).
    "2d-vit": (2, 256, 2, _vit([1, 2, 2, 4, 4]), _UNETR),
    "2d-swin": (2, 256, 2, _swin([2, 2, 2, 3, 1]), _SWIN_UNETR),
    "3d-vit": (3, 64, 1, _vit([1, 2, 2, 6, 4]), _UNETR),
    "3d-swin": (3, 64, 1, _swin([2, 2, 2, 6, 4]), _SWIN_UNETR),
}


def build(pair: str, side: str):
    dims, size, _, ours, (cls, kwargs) = PAIRS[pair]
    if side == "flemme":
        from flemme_core.build import build_model

        return build_model({"arch": "unet", "image_size": [size] * dims, "in_channels": 1, "out_channels": 2,
                            "encoder": ours})
    from monai.networks import nets

    if cls == "UNETR":
        return nets.UNETR(1, 2, [size] * dims, spatial_dims=dims, **kwargs)
    return nets.SwinUNETR(in_channels=1, out_channels=2, spatial_dims=dims, **kwargs)


def worker(pair: str, side: str, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from flemme_core.training.profiling import count_parameters, timed_training_steps

    torch.manual_seed(0)
    dims, size, batch, *_ = PAIRS[pair]
    model = build(pair, side)
    data = {"image": torch.randn(batch, 1, *[size] * dims), "label": torch.randint(0, 2, (batch, *[size] * dims))}
    # the first step (allocator and optimizer-state warm-up) is not timed
    t = timed_training_steps(model, data, criterion=F.cross_entropy, steps=steps, warmup=1, lr=1e-4, threads=threads)
    return {"params": count_parameters(model), "cpu": t.median_cpu, "wall": t.median_wall,
            "peak_mib": t.peak_rss_mb, "step_mib": t.step_rss_mb}


def run(pair: str, side: str, steps: int, threads: int, precise_memory: bool = False) -> dict:
    env = dict(os.environ)
    if precise_memory:  # every buffer >= 128 KiB is its own mmap, returned to the OS when freed
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run([sys.executable, __file__, "--worker", pair, side, "--steps", str(steps),
                          "--threads", str(threads)], capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        raise SystemExit(f"{pair}/{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("PAIR", "SIDE"))
    parser.add_argument("--only", default="", help="substring of the pairs to run (2d, 3d, vit, swin)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--components", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the pieces flemme-vit replaces or keeps (default: on)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.threads)))
        return
    rows = []
    for pair in [p for p in PAIRS if args.only in p]:
        results: dict[str, list[dict]] = {"flemme": [], "monai": []}
        for _ in range(args.rounds):
            for side, runs in results.items():
                r = run(pair, side, args.steps, args.threads)
                runs.append(r)
                print(f"# {pair} {side}: {r}", file=sys.stderr, flush=True)
        best = {side: {key: min(r[key] for r in rs) for key in rs[0]} for side, rs in results.items()}
        for side, b in best.items():
            mem = run(pair, side, 1, args.threads, precise_memory=True)
            print(f"# {pair} {side} (precise memory): {mem}", file=sys.stderr, flush=True)
            b["step_mib_default"], b["step_mib"], b["peak_mib"] = b["step_mib"], mem["step_mib"], mem["peak_mib"]
        rows.append((pair, best["flemme"], best["monai"]))
    if rows:
        print_pairs(rows, args)
    if args.components:
        print_components(args.threads)


def print_pairs(rows: list, args: argparse.Namespace) -> None:
    print(f"CPU, {args.threads} thread(s); median of {args.steps} training steps, best of {args.rounds} rounds; "
          f"ratios are flemme / MONAI (CPU time, step memory)\n")
    print("| setting | flemme model | params | MONAI model | params | CPU s/step (flemme / MONAI) | time ratio "
          "| wall s/step | step MiB (flemme / MONAI) | memory ratio | peak RSS MiB | step MiB, default malloc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for pair, ours, theirs in rows:
        dims, size, batch, enc, (cls, kw) = PAIRS[pair]
        mname = f"{cls}({', '.join(f'{k}={v}' for k, v in kw.items())})"
        extra = f", head_dim {enc['head_dim']}" if "head_dim" in enc else ""
        oname = (f"{enc['name']}+unet {enc['channels']}, blocks {enc['num_blocks']}, "
                 f"patch {enc['patch_size']}{extra}")
        print(f"| {dims}D {size}^{dims} batch {batch} | {oname} | {ours['params'] / 1e6:.2f} M | {mname} | "
              f"{theirs['params'] / 1e6:.2f} M (×{ours['params'] / theirs['params']:.2f}) | "
              f"{ours['cpu']:.2f} / {theirs['cpu']:.2f} | **{ours['cpu'] / theirs['cpu']:.2f}** | "
              f"{ours['wall']:.2f} / {theirs['wall']:.2f} | {ours['step_mib']:.0f} / {theirs['step_mib']:.0f} | "
              f"**{ours['step_mib'] / theirs['step_mib']:.2f}** | {ours['peak_mib']:.0f} / {theirs['peak_mib']:.0f} | "
              f"{ours['step_mib_default']:.0f} / {theirs['step_mib_default']:.0f} |")
    print()


def cpu_ms(fn, repeat: int = 5) -> float:
    """Median process CPU milliseconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def _layout_row(shape: tuple[int, ...], window: tuple[int, ...]) -> tuple:
    import torch
    from flemme_vit.swin import window_layout
    from monai.networks.nets.swin_unetr import window_partition, window_reverse

    x = torch.randn(*shape, requires_grad=True)
    b, *size, c = shape
    shift = tuple(w // 2 for w in window)
    axes = tuple(range(1, len(size) + 1))
    layout = window_layout(tuple(size), window, shift)

    padded = [-(-s // w) * w for s, w in zip(size, window)]

    def monai_path() -> None:  # what SwinTransformerBlock.forward_part1 does around the attention
        t = torch.nn.functional.pad(x, [0, 0] + [v for s, p in zip(size[::-1], padded[::-1]) for v in (0, p - s)])
        t = window_partition(torch.roll(t, [-s for s in shift], axes), window)
        t = torch.roll(window_reverse(t * 1.0, window, [b, *padded]), list(shift), axes)
        t[(slice(None), *[slice(0, s) for s in size])].contiguous().sum().backward()

    def gather_path() -> None:
        t = x.reshape(b, -1, c)
        if layout.padded:
            t = torch.cat([t, t.new_zeros(b, 1, c)], dim=1)
        t = t.index_select(1, layout.gather)
        (t * 1.0).index_select(1, layout.scatter).view(x.shape).sum().backward()

    return (f"shifted-window layout {'×'.join(map(str, size))}, window {window[0]}, width {c}",
            "pad + roll + window_partition / window_reverse + roll + crop", cpu_ms(monai_path),
            "ours: one precomputed index_select each way", cpu_ms(gather_path))


def _global_row(tokens: int, width: int, heads: int) -> tuple:
    import torch
    from flemme_vit.vit import GlobalAttention

    x = torch.randn(2, tokens, width, requires_grad=True)
    ours = GlobalAttention(width, heads, True, 0.0, 0.0)
    try:
        from monai.networks.blocks import SABlock

        theirs = SABlock(width, heads, qkv_bias=True)
        monai_ms = cpu_ms(lambda: theirs(x).sum().backward(), 3)
    except ImportError:  # einops missing
        monai_ms = float("nan")
    return (f"global attention, 2 × {tokens} tokens, width {width}", "SABlock (materialises N×N)", monai_ms,
            "ours: F.scaled_dot_product_attention", cpu_ms(lambda: ours(x).sum().backward(), 3))


def _window_attention_row() -> tuple:
    import torch
    from monai.networks.nets.swin_unetr import WindowAttention

    x = torch.randn(2 * 256, 64, 24, requires_grad=True)
    mask = torch.zeros(256, 64, 64)
    mask[::2, :, 32:] = -100.0
    attn = WindowAttention(24, 1, (8, 8), qkv_bias=True)

    def sdpa_window() -> None:
        q, k, v = attn.qkv(x).reshape(512, 64, 3, 1, 24).permute(2, 0, 3, 1, 4).unbind(0)
        bias = attn.relative_position_bias_table[attn.relative_position_index.reshape(-1)].reshape(64, 64, 1)
        bias = bias.permute(2, 0, 1).unsqueeze(0) + mask.unsqueeze(1)
        q, k, v = (t.reshape(2, 256, 1, 64, 24) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
        attn.proj(out.reshape(512, 1, 64, 24).transpose(1, 2).reshape(512, 64, 24)).sum().backward()

    return ("window attention, 2 × 256 windows of 8×8, width 24", "WindowAttention forward (kept)",
            cpu_ms(lambda: attn(x, mask).sum().backward()), "SDPA with bias + mask (not used)", cpu_ms(sdpa_window))


def print_components(threads: int) -> None:
    """Why flemme-vit uses MONAI's pieces or its own (forward + backward, CPU ms)."""
    import torch

    torch.set_num_threads(threads)
    rows = [_layout_row((2, 128, 128, 96), (8, 8)), _layout_row((1, 30, 30, 30, 48), (4, 4, 4)),
            _global_row(4096, 32, 2), _global_row(1024, 64, 4), _window_attention_row()]
    print(f"Components, forward + backward, CPU ms ({threads} thread(s), median)\n")
    print("| what | MONAI | ms | alternative | ms |")
    print("|---|---|---|---|---|")
    for what, a, ams, b, bms in rows:
        print(f"| {what} | {a} | {ams:.0f} | {b} | {bms:.0f} |")

if __name__ == "__main__":
    main()
