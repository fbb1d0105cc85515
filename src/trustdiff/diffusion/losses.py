"""Denoising losses. Each returns a per-sample tensor [N]; the caller reduces.

All share one form (Karras et al. 2022, Eq. 8): λ(σ)·‖D(x₀ + σn; σ) − x₀‖², averaged over
pixels, and differ only in how σ is drawn and weighted. ``x0`` is model space, N×C×H×W in [-1, 1].
"""
from __future__ import annotations

import torch

from . import schedules
from .precond import _bc


def randn_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise shaped like x, returned on x's device in x's dtype.

    ``generator`` is one ``torch.Generator`` or a list of N of them, one per sample — then sample
    i's noise comes from its own generator, so an image depends on its seed only, not on the batch
    it was drawn in (EDM's per-image seeds). The noise is drawn on the generator's device and then
    moved to x's: a CPU generator gives the same noise whether x is on the CPU or a GPU (the
    per-image seeds of sampling use that), a generator on x's device costs no copy."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"expected {x.shape[0]} generators (one per sample), got {len(generator)}")
        return torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype)
                            for g in generator]).to(x.device)
    where = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device)


def _rand(n: int, x: torch.Tensor, generator=None) -> torch.Tensor:
    return torch.rand((n,), generator=generator, device=x.device, dtype=x.dtype)


def denoising_loss(denoiser, x0, sigma, weight, *, cond=None, generator=None, teacher=None) -> torch.Tensor:
    """λ(σ)·mean_pixels (D(x₀ + σn; σ) − x₀)² with n ~ N(0, I). sigma, weight: [N].

    With ``teacher(x, σ) → N×C×H×W`` the regression target is the teacher's output at the same
    noisy input instead of x₀ (computed without gradients): distillation under the same σ draw
    and weighting, λ(σ)·‖D(x₀ + σn; σ) − D̂(x₀ + σn; σ)‖², which is 0 with a 0 gradient when D = D̂."""
    n = randn_like(x0, generator) * _bc(sigma)
    D_yn = denoiser(x0 + n, sigma, cond)
    if teacher is None:
        goal = x0
    else:
        with torch.no_grad():
            goal = teacher(x0 + n, sigma)
    return weight * (D_yn - goal).square().flatten(1).mean(1)


def edm_loss(denoiser, x0, *, cond=None, P_mean: float = -1.2, P_std: float = 1.2,
             sigma_data: float = 0.5, generator=None, teacher=None) -> torch.Tensor:
    """EDM: ln σ ~ N(P_mean, P_std²), λ(σ) = (σ² + σ_d²)/(σ·σ_d)² (Karras et al. 2022, Table 1)."""
    rnd_normal = torch.randn((x0.shape[0],), generator=generator, device=x0.device, dtype=x0.dtype)
    sigma = (rnd_normal * P_std + P_mean).exp()
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return denoising_loss(denoiser, x0, sigma, weight, cond=cond, generator=generator, teacher=teacher)


def vp_loss(denoiser, x0, *, cond=None, beta_d: float = schedules.VP_BETA_D,
            beta_min: float = schedules.VP_BETA_MIN, epsilon_t: float = 1e-5, generator=None) -> torch.Tensor:
    """VP (Song et al. 2021): t ~ U(ε_t, 1), σ = σ_VP(t), λ = 1/σ² — i.e. the ε-prediction loss."""
    t = 1 + _rand(x0.shape[0], x0, generator) * (epsilon_t - 1)
    sigma = schedules.vp_sigma(t, beta_d, beta_min)
    return denoising_loss(denoiser, x0, sigma, 1 / sigma**2, cond=cond, generator=generator)


def ve_loss(denoiser, x0, *, cond=None, sigma_min: float = 0.02, sigma_max: float = 100.0,
            generator=None) -> torch.Tensor:
    """VE (Song et al. 2021): ln σ ~ U(ln σ_min, ln σ_max), λ = 1/σ²."""
    u = _rand(x0.shape[0], x0, generator)
    sigma = sigma_min * (sigma_max / sigma_min) ** u
    return denoising_loss(denoiser, x0, sigma, 1 / sigma**2, cond=cond, generator=generator)


def ddpm_eps_loss(denoiser, x0, alphas_cumprod: torch.Tensor, *, cond=None, generator=None,
                  teacher=None) -> torch.Tensor:
    """DDPM (Ho et al. 2020, Algorithm 1): t ~ U{0..T−1}, ‖ε̂ − ε‖². Through the Denoiser
    contract ε̂ = (x − D)/σ_t, so this is λ = 1/σ_t² on the x₀ error."""
    T = alphas_cumprod.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), generator=generator, device=x0.device)
    sigma = schedules.alpha_bar_to_sigma(alphas_cumprod.to(x0.device)[t]).to(x0.dtype)
    return denoising_loss(denoiser, x0, sigma, 1 / sigma**2, cond=cond, generator=generator, teacher=teacher)


LOSSES = {"edm": edm_loss, "vp": vp_loss, "ve": ve_loss}
