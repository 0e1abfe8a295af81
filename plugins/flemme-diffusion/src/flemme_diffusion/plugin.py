"""Entry point of flemme-diffusion: names and lazy factories only (no torch import)."""

from flemme_core.hookspecs import hookimpl

_PKG = "flemme_diffusion"


@hookimpl
def register_architectures(register) -> None:
    register("vae", f"{_PKG}.vae:VAE",
             "variational autoencoder: Gaussian latent (spatial or vector), KL with weight and warm-up, "
             "samples from the prior", task="generation")
    register("ddpm", f"{_PKG}.ddpm:DDPM",
             "denoising diffusion: any family's U-Net as noise predictor, time through the context vector; "
             "DDPM/DDIM sampling (MONAI schedulers), epsilon/v/sample, linear/cosine, class CFG",
             task="generation")
    register("edm", f"{_PKG}.edm:EDM",
             "Karras et al. (2022) EDM: preconditioned denoiser, log-normal sigma training, Heun sampler",
             task="generation")
    register("ldm", f"{_PKG}.latent:LDM",
             "latent diffusion over a trained ae/vae checkpoint (frozen, recorded by config and sha256)",
             task="generation", requires="a trained ae/vae checkpoint (arch_options.autoencoder)")
    register("sdm", f"{_PKG}.supervised:SDM",
             "supervised diffusion: the input image conditions (concat or per-level injection), the target "
             "is generated; predict averages an ensemble and reports its spread", task="reconstruction")


@hookimpl
def register_commands(register) -> None:
    register("sample", f"{_PKG}.cli_sample:sample",
             "draw N samples of a generative checkpoint (vae, ddpm, edm, ldm, sdm)")
