"""Noise schedules and the maps between time t and noise level σ.

All σ here are in model units (data in [-1, 1]) and follow EDM's convention
x = x₀ + σ·n (Karras et al. 2022, Eq. 1): a "scaled" VP state x_t = √ᾱ·x₀ + √(1-ᾱ)·ε
corresponds to x = x_t/√ᾱ at σ = √((1-ᾱ)/ᾱ).
"""
from __future__ import annotations

import math

import torch

#: VP SDE of Song et al. 2021 with linear β(t) = β_min + β_d·t from 0.1 to 20 (EDM Table 1)
VP_BETA_MIN = 0.1
VP_BETA_D = 19.9


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """EDM's time steps (Karras et al. 2022, Eq. 5): n levels from sigma_max down to sigma_min,
    evenly spaced in σ^(1/ρ), followed by a final 0. Returns a tensor of shape [n + 1]."""
    if n < 1:
        raise ValueError(f"karras_sigmas: expected n >= 1, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    frac = i / max(n - 1, 1)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + frac * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=dtype)


def geometric_sigmas(n: int, sigma_min: float, sigma_max: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """NCSN's levels (Song & Ermon 2019): n values geometric from sigma_max to sigma_min, then 0.
    Shape [n + 1]."""
    sigmas = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=dtype)


# --- VP (Song et al. 2021; EDM Table 1, "VP") ---------------------------------------------------

def vp_sigma(t, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN):
    """σ(t) = √(exp(½β_d t² + β_min t) − 1) for t in [0, 1]. Tensor or float in, same out."""
    t = torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
    return torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_t(sigma, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN):
    """The inverse of :func:`vp_sigma`: t(σ) = (√(β_min² + 2β_d·log(1+σ²)) − β_min)/β_d."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64) if not torch.is_tensor(sigma) else sigma
    return (torch.sqrt(beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)) - beta_min) / beta_d


def vp_beta(t, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN):
    """β(t) = β_min + β_d·t, the VP SDE's linear noise rate."""
    return beta_min + beta_d * t


def vp_sigmas(n: int, t_min: float = 1e-3, t_max: float = 1.0, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """VP sampling levels (EDM Table 1): t uniform from t_max to t_min, σ = vp_sigma(t), then 0.
    Shape [n + 1]."""
    t = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    return torch.cat([vp_sigma(t), t.new_zeros(1)]).to(device=device, dtype=dtype)


# --- VE (Song et al. 2021; EDM Table 1, "VE": σ(t) = √t) ---------------------------------------

def ve_sigma(t):
    """VE: σ(t) = √t."""
    return torch.sqrt(torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t)


def ve_t(sigma):
    """VE: t(σ) = σ²."""
    return (torch.as_tensor(sigma, dtype=torch.float64) if not torch.is_tensor(sigma) else sigma) ** 2


# --- discrete DDPM schedules (Ho et al. 2020) ---------------------------------------------------

def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t}(1 − β_s) for DDPM's linear β schedule. Shape [T], decreasing, float64."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_alphas_cumprod(num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ_t of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17): f(u) = cos²((u + s)/(1 + s)·π/2),
    β_t = min(1 − f((t+1)/T)/f(t/T), max_beta), ᾱ_t = Π_{s≤t}(1 − β_s). Shape [T], float64."""
    u = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


def alpha_bar_to_sigma(alpha_bar):
    """ᾱ → σ = √((1 − ᾱ)/ᾱ)."""
    return torch.sqrt((1.0 - alpha_bar) / alpha_bar)


def sigma_to_alpha_bar(sigma):
    """σ → ᾱ = 1/(1 + σ²)."""
    return 1.0 / (1.0 + sigma**2)
