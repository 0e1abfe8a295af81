"""Generative models on 4 mm Colin27 axial slices (48×56), each under the same CPU budget.

Part 1 (generation): flemme ``ddpm`` with several encoder families, ``ldm`` over a small
``vae`` trained inside the same budget, and MONAI's ``DiffusionModelUNet`` at matched
parameters, trained with the same loop, batch and optimiser. Each draws as many samples
as there are training slices (DDIM) and is scored against the 17 held-out slices
(z mod 10 == 8) with RBF-MMD², k-NN precision/recall, MS-SSIM among samples and the
memorisation ratio (nearest-training-slice distance of samples / of held-out slices), next to
two controls computed in the same run: the training slices (real-data floor) and the
training mean plus noise (a collapsed generator).

Part 2 (reconstruction, 4× random Cartesian under-sampling, 8 % centre): ``sdm`` (ensemble
mean) vs a supervised ``ae``, PSNR/SSIM on the held-out slices, zero-filled input as floor.

The budget is **process CPU time** (``time.process_time``: all threads of this process),
so results are comparable on a shared machine; wall time is reported too. 1800 CPU-s is
"15 minutes on 2 fully used threads", the anchor's setting.

    python benchmarks/bench_diffusion.py --budget 1800 --threads 2 --out bench-diffusion.json
    python benchmarks/bench_diffusion.py --models ddpm-cnn,monai --budget 60   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spin-waiting: CPU time = useful work

import numpy as np
import torch

GENERATORS = {
    # name: (model config overrides, lr)
    "ddpm-cnn": {"arch": "ddpm", "encoder": {"name": "cnn", "channels": [32, 64, 128], "num_blocks": 1,
                                             "block": "res_conv"}},
    "ddpm-swin": {"arch": "ddpm", "encoder": {"name": "swin", "channels": [32, 64, 128], "num_blocks": 1}},
    "ddpm-mamba": {"arch": "ddpm", "encoder": {"name": "mamba", "channels": [32, 64, 128], "num_blocks": 1}},
    "edm-cnn": {"arch": "edm", "encoder": {"name": "cnn", "channels": [32, 64, 128], "num_blocks": 1,
                                           "block": "res_conv"}},
}
RECIPE = {"timesteps": 1000, "schedule": "cosine", "prediction": "v", "loss_weighting": "min_snr", "ema": 0.999,
          "sample_steps": 50}
MONAI_CANDIDATES = [(32, 32, 64), (32, 48, 64), (32, 64, 64), (32, 64, 96)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def colin_slices(kspace: bool = False, seed: int = 0):
    """(train, held-out) from the data layer's preset (4 mm, whole slices)."""
    from flemme_core.data.loaders import build_datasets

    transforms = {"kspace": {"pattern": "random", "acceleration": 4, "center_fraction": 0.08}} if kspace else {
        "kspace": False}
    train, held, info = build_datasets({"preset": "colin27-t1-2d", "options": {"downsample": 4},
                                        "transforms": transforms, "batch_size": 16, "cache": not kspace}, seed=seed)
    return train, held, info


def stack(ds, key: str = "image") -> torch.Tensor:
    from flemme_diffusion.evaluate import stack_images

    return stack_images(ds, key)


def train_for(model, batches, budget: float, lr: float = 1e-3, warmup: int = 100, log_every: int = 100):
    """AdamW + linear warm-up + grad clipping until ``budget`` CPU seconds are used; returns stats
    (flemme_core.training.profiling.fit_in_memory, one stage)."""
    from flemme_core.training.profiling import fit_in_memory

    report = fit_in_memory(model, batches, cpu_budget_s=budget, lr=lr, warmup=warmup, weight_decay=0.0,
                           criterion=torch.nn.MSELoss(), log=log, log_every=log_every)
    return next(iter(report.values()))


def image_batches(images: torch.Tensor, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)

    def get(step: int):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        return {"image": images[idx]}

    return get


def base_config(overrides: dict) -> dict:
    cfg = {"image_size": [48, 56], "in_channels": 1, "out_channels": 1, **overrides}
    return cfg


class MonaiDDPM(torch.nn.Module):
    """MONAI's DiffusionModelUNet driven exactly like flemme's ddpm (same loss, scheduler, sampler)."""

    def __init__(self, channels, recipe: dict):
        super().__init__()
        from flemme_diffusion import schedules
        from monai.networks.nets import DiffusionModelUNet

        self.net = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=channels,
                                      attention_levels=(False, False, True), num_res_blocks=1,
                                      num_head_channels=32, norm_num_groups=16)
        self.recipe = recipe
        self.scheduler = schedules.ddpm_scheduler(recipe["timesteps"], recipe["schedule"], recipe["prediction"])

    def training_loss(self, batch, criterion):
        from flemme_diffusion import schedules
        from monai.inferers import DiffusionInferer

        x0 = batch["image"] * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.recipe["timesteps"], (len(x0),))
        pred = DiffusionInferer(self.scheduler)(inputs=x0, diffusion_model=self.net, noise=noise, timesteps=t)
        p = self.recipe["prediction"]
        target = noise if p == "epsilon" else self.scheduler.get_velocity(x0, noise, t) if p == "v" else x0
        per = (pred - target).pow(2).flatten(1).mean(1)
        if self.recipe.get("loss_weighting") == "min_snr":
            per = per * schedules.min_snr_weight(schedules.snr(self.scheduler.alphas_cumprod, t), p, 5.0)
        return per.mean(), {}

    @torch.no_grad()
    def sample(self, n, seed=0, steps=50, **_):
        from flemme_diffusion import schedules
        from monai.inferers import DiffusionInferer

        r = self.recipe
        sched = schedules.ddim_scheduler(r["timesteps"], r["schedule"], r["prediction"], steps)
        noise = torch.stack([torch.randn(1, 48, 56, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])
        self.eval()
        out = DiffusionInferer(sched).sample(input_noise=noise, diffusion_model=self.net, scheduler=sched, verbose=False)
        self.train()
        return (out + 1) / 2


def count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def evaluate(model, train_x, held_x, steps: int, sampler_kwargs: dict) -> dict:
    from flemme_diffusion.evaluate import draw, generation_report

    start = time.process_time()
    samples = draw(model, len(train_x), seed=0, **sampler_kwargs)
    cpu = time.process_time() - start
    report = generation_report(samples, held_x, train_x)
    report["sample_cpu_s_per_image"] = cpu / len(train_x)
    return report, samples


def run_generator(name: str, train_x, held_x, budget: float, recipe: dict, steps: int, seed: int) -> dict:
    from flemme_core.build import build_model

    torch.manual_seed(seed)
    batches = image_batches(train_x, 16, seed)
    if name == "monai":
        target = count(build_model(base_config({**GENERATORS["ddpm-cnn"], "arch_options": recipe})))
        best = min(MONAI_CANDIDATES, key=lambda ch: abs(count(MonaiDDPM(ch, recipe)) - target))
        model = MonaiDDPM(best, recipe)
        info = {"monai_channels": list(best)}
        stats = train_for(model, batches, budget)
        kwargs = {"steps": steps}
    elif name == "ldm-cnn":
        return run_ldm(train_x, held_x, budget, recipe, steps, seed)
    else:
        cfg = GENERATORS[name]
        opts = dict(recipe) if cfg["arch"] == "ddpm" else {"ema": recipe["ema"], "sample_steps": 18}
        model = build_model(base_config({**cfg, "arch_options": opts}))
        info = {}
        stats = train_for(model, batches, budget)
        kwargs = {"steps": steps, "sampler": "ddim"} if cfg["arch"] == "ddpm" else {"steps": 18}
    report, samples = evaluate(model, train_x, held_x, steps, kwargs)
    return {"model": name, "parameters": count(model), **info, **stats, **report}, samples


VAE_FRACTION = 0.4


def run_ldm(train_x, held_x, budget: float, recipe: dict, steps: int, seed: int):
    """A small VAE (first ``VAE_FRACTION`` of the budget) then latent diffusion (the rest), one budget in all."""
    import tempfile

    from flemme_core.build import build_model
    from flemme_core.checkpoint import save_model

    batches = image_batches(train_x, 16, seed)
    vae = build_model(base_config({"arch": "vae", "encoder": {"name": "cnn", "channels": [32, 64, 128],
                                                              "num_blocks": 1, "block": "res_conv", "norm": "group"},
                                   "arch_options": {"latent_channels": 4, "kl_weight": 1e-3,
                                                    "kl_warmup": 200}}))
    # The VAE's down-sampling: 3 levels at patch 1 -> stride 4 -> 4 x 12 x 14 latent.
    vae_stats = train_for(vae, batches, VAE_FRACTION * budget, lr=2e-3)
    tmp = Path(tempfile.mkdtemp()) / "vae.safetensors"
    save_model(vae, tmp)
    ldm = build_model(base_config({"arch": "ldm", "encoder": {"name": "cnn", "channels": [64, 128], "num_blocks": 2,
                                                              "block": "res_conv"},
                                   "arch_options": {**recipe, "autoencoder": str(tmp)}}))
    stats = train_for(ldm, batches, (1 - VAE_FRACTION) * budget)
    report, samples = evaluate(ldm, train_x, held_x, steps, {"steps": steps, "sampler": "ddim"})
    with torch.no_grad():
        from flemme_diffusion.metrics import psnr

        vae.eval()
        recon_psnr = psnr(vae.predict(held_x), held_x)
    total = {k: vae_stats[k] + stats[k] for k in ("steps", "cpu_s", "wall_s")}
    return {"model": "ldm-cnn", "parameters": count(ldm) + count(vae), "vae_steps": vae_stats["steps"],
            "vae_cpu_s": vae_stats["cpu_s"], "vae_fraction": VAE_FRACTION,
            "vae_heldout_psnr": recon_psnr, **stats, **{f"total_{k}": v for k, v in total.items()},
            **report}, samples


def run_recon(budget: float, seed: int, ensemble: int, steps: int, grids: Path | None = None) -> list[dict]:
    """sdm vs supervised ae on 4x under-sampled slices; zero-filled input as the floor.

    With ``grids``: ``recon.png``, one held-out slice per row: zero-filled input, ae, sdm
    ensemble mean, sdm spread (scaled to its maximum), fully sampled target.
    """
    from flemme_diffusion.metrics import psnr, ssim

    from flemme_core.build import build_model

    train_ds, held_ds, _ = colin_slices(kspace=True, seed=seed)
    held_in, held_target = stack(held_ds, "image"), stack(held_ds, "label")
    gen = torch.Generator().manual_seed(seed)

    def batches(step: int):
        idx = torch.randint(0, len(train_ds), (16,), generator=gen).tolist()
        items = [train_ds[i] for i in idx]
        return {k: torch.stack([torch.as_tensor(it[k]).float() for it in items]) for k in ("image", "label")}

    enc = {"name": "cnn", "channels": [32, 64, 128], "num_blocks": 1, "block": "res_conv"}
    rows = [{"model": "zero-filled input", "psnr": psnr(held_in, held_target), "ssim": ssim(held_in, held_target)}]
    preds: dict[str, torch.Tensor] = {}
    for name, cfg in [("ae (supervised)", {"arch": "ae", "encoder": {**enc, "norm": "group"},
                                           "arch_options": {"supervised": True, "skip": True}}),
                      ("sdm", {"arch": "sdm", "encoder": enc,
                               "arch_options": {**RECIPE, "sample_steps": steps, "ensemble": ensemble}})]:
        torch.manual_seed(seed)
        model = build_model(base_config(cfg))
        log(f"  {name}: training for {budget:.0f} CPU-s")
        stats = train_for(model, batches, budget)
        model.eval()
        start = time.process_time()
        with torch.no_grad():
            if name == "sdm":
                pred, spread = model.predict_with_uncertainty(held_in, n=ensemble, steps=steps)
                extra = {"mean_spread": float(spread.mean())}
                preds["spread"] = spread / spread.max().clamp(min=1e-8)
            else:
                pred, extra = model.predict(held_in), {}
        rows.append({"model": name, "parameters": count(model), **stats, "psnr": psnr(pred, held_target),
                     "ssim": ssim(pred, held_target), "predict_cpu_s_per_image": (time.process_time() - start) / len(held_in),
                     **extra})
        preds[name] = pred
        log(f"  -> {name}: PSNR {rows[-1]['psnr']:.2f} SSIM {rows[-1]['ssim']:.3f}")
    if grids is not None:
        from flemme_diffusion.cli_sample import _grid_png

        pick = torch.linspace(0, len(held_in) - 1, 5).round().long()
        cols = [held_in, preds["ae (supervised)"], preds["sdm"], preds["spread"], held_target]
        tiles = torch.stack([c[pick].float().clamp(0, 1) for c in cols], 1).flatten(0, 1)  # row-major: slice, column
        _grid_png(tiles.numpy(), Path(grids) / "recon.png", (0.0, 1.0))
    return rows


def nearest_pairs_png(samples: torch.Tensor, train_x: torch.Tensor, path: Path, k: int = 8) -> None:
    """Each of the first ``k`` samples beside its nearest training slice (the memorisation ratio's)."""
    from flemme_diffusion.cli_sample import _grid_png
    from flemme_diffusion.metrics import nearest_training

    _, nearest = nearest_training(samples[:k], train_x)
    tiles = torch.stack([samples[:k].float(), train_x[nearest].float()], 1).flatten(0, 1)  # sample, its nearest
    _grid_png(tiles.clamp(0, 1).numpy(), path, (0.0, 1.0))


def table(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    return head + "\n".join("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows)


def main() -> None:
    global VAE_FRACTION
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=1800.0, help="CPU seconds per model (1800 = 15 min x 2 threads)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="ddpm-cnn,ddpm-swin,ddpm-mamba,monai,ldm-cnn")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps when sampling")
    ap.add_argument("--recon", action="store_true", help="also run part 2 (sdm vs ae)")
    ap.add_argument("--recon-only", action="store_true")
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--recon-budget", type=float, default=None, help="CPU seconds per recon model (default --budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-fraction", type=float, default=VAE_FRACTION, help="ldm: share of the budget for its vae")
    ap.add_argument("--out", default="bench-diffusion.json")
    ap.add_argument("--grids", default=None, help="folder for a PNG grid of each model's samples")
    args = ap.parse_args()
    if "monai" in args.models.split(",") and not args.recon_only:
        import importlib.util

        if importlib.util.find_spec("einops") is None:  # MONAI's attention blocks need it
            ap.error("the monai row needs einops: pip install einops (nox -s bench installs it)")
    torch.set_num_threads(args.threads)
    VAE_FRACTION = args.vae_fraction
    results = {"budget_cpu_s": args.budget, "threads": args.threads, "generation": [], "reconstruction": []}
    out = Path(args.out)
    if not args.recon_only:
        train_ds, held_ds, info = colin_slices()
        train_x, held_x = stack(train_ds), stack(held_ds)
        log(f"data: {len(train_x)} training slices, {len(held_x)} held out ({info.held_out_description})")
        for name in [m for m in args.models.split(",") if m]:
            log(f"{name}: training for {args.budget:.0f} CPU-s")
            row, samples = run_generator(name, train_x, held_x, args.budget, dict(RECIPE), args.steps, args.seed)
            results["generation"].append(row)
            out.write_text(json.dumps(results, indent=1))
            log(f"  -> precision {row['precision']:.2f} recall {row['recall']:.2f} mmd {row['rbf_mmd2']:.3f}")
            if args.grids:
                from flemme_diffusion.cli_sample import _grid_png

                _grid_png(samples[:32].numpy(), Path(args.grids) / f"{name}.png", (0.0, 1.0))
                np.save(Path(args.grids) / f"{name}-samples.npy", samples.numpy())  # for later analysis
                nearest_pairs_png(samples, train_x, Path(args.grids) / f"{name}-nearest.png")
    if args.recon or args.recon_only:
        recon_budget = args.recon_budget if args.recon_budget is not None else args.budget
        results["recon_budget_cpu_s"] = recon_budget
        results["reconstruction"] = run_recon(recon_budget, args.seed, args.ensemble, 20,
                                              Path(args.grids) if args.grids else None)
        out.write_text(json.dumps(results, indent=1))
    gen_cols = ["model", "parameters", "steps", "cpu_s_per_step", "precision", "recall", "rbf_mmd2", "ms_ssim_pairs",
                "memorisation_ratio", "sample_cpu_s_per_image"]
    if results["generation"]:
        rows = list(results["generation"])
        first = rows[0]
        rows.append({"model": "control: training slices", **{k.split("/")[1]: v for k, v in first.items()
                                                             if k.startswith("control_train/")}})
        rows.append({"model": "control: mean + noise", **{k.split("/")[1]: v for k, v in first.items()
                                                          if k.startswith("control_collapsed/")}})
        rows.append({"model": "held-out slices", "ms_ssim_pairs": first["heldout/ms_ssim_pairs"]})
        print(f"## Generation, Colin27 4 mm slices, {args.budget:.0f} CPU-s each ({args.threads} threads)\n")
        print(table(rows, gen_cols))
    if results["reconstruction"]:
        print(f"\n## 4x under-sampling reconstruction, {results['recon_budget_cpu_s']:.0f} CPU-s each\n")
        print(table(results["reconstruction"], ["model", "parameters", "steps", "psnr", "ssim", "mean_spread",
                                                "predict_cpu_s_per_image"]))


if __name__ == "__main__":
    main()
