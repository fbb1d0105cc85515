"""The diffusion core: one Denoiser contract in σ space (EDM form), schedules, preconditioning,
losses, samplers and guidance. See :mod:`trustdiff.diffusion.precond` for the contract."""
from . import guidance, losses, oracle, samplers, schedules
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .losses import ddpm_eps_loss, denoising_loss, edm_loss, ve_loss, vp_loss
from .oracle import GaussianDenoiser, GaussianMixtureDenoiser
from .precond import DiffusersDenoiser, Preconditioned, as_sigma, discrete_sigmas
from .samplers import SAMPLERS, ddim, ddpm_ancestral, euler, euler_maruyama, heun
from .schedules import (
    alpha_bar_to_sigma, ddpm_alphas_cumprod, geometric_sigmas, karras_sigmas, sigma_to_alpha_bar,
    ve_sigma, ve_t, vp_sigma, vp_sigmas, vp_t,
)

__all__ = [
    "guidance", "losses", "oracle", "samplers", "schedules",
    "ClassifierFreeGuidance", "ClassifierGuidance",
    "ddpm_eps_loss", "denoising_loss", "edm_loss", "ve_loss", "vp_loss",
    "GaussianDenoiser", "GaussianMixtureDenoiser",
    "DiffusersDenoiser", "Preconditioned", "as_sigma", "discrete_sigmas",
    "SAMPLERS", "ddim", "ddpm_ancestral", "euler", "euler_maruyama", "heun",
    "alpha_bar_to_sigma", "ddpm_alphas_cumprod", "geometric_sigmas", "karras_sigmas",
    "sigma_to_alpha_bar", "ve_sigma", "ve_t", "vp_sigma", "vp_sigmas", "vp_t",
]
