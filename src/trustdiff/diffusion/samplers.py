"""Samplers over the Denoiser contract.

Every sampler has the leading signature ``sampler(denoiser, x, sigmas, *, cond=None,
generator=None, ...)``: ``x`` (model space, N×C×H×W) is already at noise level ``sigmas[0]``;
``sigmas`` is a decreasing 1-D tensor (usually ending in 0); the result is the sample at
``sigmas[-1]``. Nothing here disables autograd: gradients flow from the output to ``x`` and to
the denoiser's parameters (DiffPure attacks and classifier guidance need them).
"""
from __future__ import annotations

import math

import torch

from .losses import randn_like


def _pairs(sigmas: torch.Tensor):
    """(σ_i, σ_{i+1}) as Python floats, for i = 0..len−2."""
    s = [float(v) for v in sigmas]
    return list(zip(s[:-1], s[1:]))


def _d(denoiser, x, sigma: float, cond):
    """The probability-flow ODE's slope dx/dσ = (x − D(x; σ))/σ (EDM Eq. 4 with σ(t) = t)."""
    return (x - denoiser(x, sigma, cond)) / sigma


def euler(denoiser, x, sigmas, *, cond=None, generator=None):
    """Euler steps of the probability-flow ODE (EDM Algorithm 1 without the 2nd-order correction).
    NFE = len(sigmas) − 1."""
    for s, s_next in _pairs(sigmas):
        x = x + (s_next - s) * _d(denoiser, x, s, cond)
    return x


def heun(denoiser, x, sigmas, *, cond=None, churn: float = 0.0, S_min: float = 0.0,
         S_max: float = float("inf"), S_noise: float = 1.0, generator=None):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2); ``churn = S_churn``, and
    ``churn=0`` gives the deterministic Heun sampler (Algorithm 1). NFE = 2(len(sigmas) − 1) − 1
    when sigmas ends in 0."""
    N = len(sigmas) - 1
    for t_cur, t_next in _pairs(sigmas):
        gamma = min(churn / N, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(t_hat**2 - t_cur**2) * S_noise * randn_like(x, generator)
        d_cur = _d(denoiser, x, t_hat, cond)
        x_next = x + (t_next - t_hat) * d_cur
        if t_next > 0:
            d_prime = _d(denoiser, x_next, t_next, cond)
            x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x


def ddim(denoiser, x, sigmas, *, cond=None, eta: float = 0.0, generator=None):
    """DDIM (Song, Meng & Ermon 2021, Eq. 12) in σ space: from x̂₀ = D(x; σ) and
    ε̂ = (x − x̂₀)/σ, x' = x̂₀ + √(σ'² − s²)·ε̂ + s·z with s = η·σ'·√(1 − σ'²/σ²).
    η = 0 is deterministic (and equals Euler in σ); η = 1 is DDPM's ancestral sampler."""
    for s, s_next in _pairs(sigmas):
        x0 = denoiser(x, s, cond)
        if s_next == 0:
            x = x0
            continue
        s_up = eta * s_next * math.sqrt(max(1 - s_next**2 / s**2, 0.0))
        s_down = math.sqrt(max(s_next**2 - s_up**2, 0.0))
        x = x0 + s_down * (x - x0) / s
        if s_up > 0:
            x = x + s_up * randn_like(x, generator)
    return x


def ddpm_ancestral(denoiser, x, sigmas, *, cond=None, generator=None):
    """DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2): each step draws from the Gaussian
    posterior q(x_{t−1} | x_t, x̂₀), which is :func:`ddim` with η = 1."""
    return ddim(denoiser, x, sigmas, cond=cond, eta=1.0, generator=generator)


def _reverse_sde_step(denoiser, x, s: float, s_next: float, cond, generator):
    """One Euler–Maruyama step of the reverse SDE dx = −d(σ²)·∇log p dt + √(d(σ²)) dw̄, with
    ∇log p(x; σ) = (D(x; σ) − x)/σ²; the final step to σ = 0 returns the denoised estimate."""
    x0 = denoiser(x, s, cond)
    if s_next == 0:
        return x0
    dvar = s**2 - s_next**2
    return x + (dvar / s**2) * (x0 - x) + math.sqrt(dvar) * randn_like(x, generator)


def euler_maruyama(denoiser, x, sigmas, *, cond=None, generator=None):
    """Euler–Maruyama on the reverse-time SDE (Song et al. 2021), as DiffPure (Nie et al. 2022)
    solves it. In σ space the VP SDE is a VE SDE of x/√ᾱ, so one implementation serves both."""
    for s, s_next in _pairs(sigmas):
        x = _reverse_sde_step(denoiser, x, s, s_next, cond, generator)
    return x


def annealed_langevin(denoiser, x, sigmas, *, cond=None, n_steps_each: int = 100,
                      step_lr: float = 2e-5, final_denoise: bool = True, generator=None):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): for each σ_i > 0,
    T = ``n_steps_each`` steps x ← x + (α_i/2)·s(x; σ_i) + √α_i·z with α_i = ε·σ_i²/σ_L²,
    ε = ``step_lr`` and σ_L the smallest positive σ. If sigmas ends in 0 and ``final_denoise``,
    the result is D(x; σ_L) (the denoising step of Jolicoeur-Martineau et al. 2021)."""
    positive = [float(s) for s in sigmas if float(s) > 0]
    sigma_L = positive[-1]
    for s in positive:
        alpha = step_lr * (s / sigma_L) ** 2
        for _ in range(n_steps_each):
            score = (denoiser(x, s, cond) - x) / s**2
            x = x + 0.5 * alpha * score + math.sqrt(alpha) * randn_like(x, generator)
    if float(sigmas[-1]) == 0 and final_denoise:
        x = denoiser(x, sigma_L, cond)
    return x


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


def predictor_corrector(denoiser, x, sigmas, *, cond=None, snr: float = 0.16, n_corrector: int = 1,
                        generator=None):
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 2/3): at each σ, ``n_corrector``
    Langevin corrector steps with step ε = 2(r·‖z‖/‖∇log p‖)² (r = ``snr``), then a
    reverse-diffusion (Euler–Maruyama) predictor step to the next σ."""
    for s, s_next in _pairs(sigmas):
        for _ in range(n_corrector):
            grad = (denoiser(x, s, cond) - x) / s**2
            z = randn_like(x, generator)
            eps = 2 * (snr * _per_sample_norm(z) / _per_sample_norm(grad).clamp_min(1e-12)) ** 2
            x = x + eps * grad + (2 * eps).sqrt() * z
        x = _reverse_sde_step(denoiser, x, s, s_next, cond, generator)
    return x


SAMPLERS = {
    "heun": heun, "euler": euler, "ddim": ddim, "ddpm": ddpm_ancestral,
    "euler_maruyama": euler_maruyama, "langevin": annealed_langevin, "pc": predictor_corrector,
}


def nfe(sampler: str, n_steps: int, **kw) -> int:
    """Denoiser evaluations that ``SAMPLERS[sampler]`` makes for ``n_steps`` levels ending at 0."""
    if sampler == "heun":
        return 2 * n_steps - 1
    if sampler == "langevin":
        return n_steps * kw.get("n_steps_each", 100) + 1
    if sampler == "pc":
        return n_steps * (kw.get("n_corrector", 1) + 1)
    return n_steps
