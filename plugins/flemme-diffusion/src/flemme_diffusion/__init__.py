"""flemme-diffusion: generative architectures (vae, ddpm, edm, ldm, sdm) for any flemme encoder family.

The entry point (:mod:`flemme_diffusion.plugin`) only registers names; torch, MONAI's
schedulers and the sampling code load when a generative model is built.
"""

__version__ = "0.1.0"
