"""Ideal denoisers for data whose distribution is known in closed form.

For data p₀ and x = x₀ + σn the ideal denoiser is D*(x; σ) = E[x₀ | x] (Tweedie). For a
Gaussian and a mixture of isotropic Gaussians it is exact, which makes these the oracles against
which samplers, losses and preconditioning are tested.
"""
from __future__ import annotations

import torch
from torch import nn

from .precond import _bc, as_sigma


class GaussianDenoiser(nn.Module):
    """Data x₀ ~ N(μ, s²I): D*(x; σ) = μ + s²/(s² + σ²)·(x − μ).

    ``mean`` is a float or a tensor broadcastable to C×H×W; ``std`` a float."""

    def __init__(self, mean, std: float):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.std = float(std)

    def forward(self, x, sigma, cond=None):
        sigma = _bc(as_sigma(sigma, x))
        mu = self.mean.to(x.dtype)
        return mu + self.std**2 / (self.std**2 + sigma**2) * (x - mu)

    def sample(self, shape, generator=None, sigma: float = 0.0):
        """Draws from the data (σ = 0) or from the noised marginal N(μ, (s² + σ²)I)."""
        n = torch.randn(shape, generator=generator)
        return self.mean + (self.std**2 + sigma**2) ** 0.5 * n


class GaussianMixtureDenoiser(nn.Module):
    """Data x₀ ~ Σ_k π_k N(μ_k, s_k² I) over flattened images of dimension d.

    D*(x; σ) = Σ_k r_k(x)·(μ_k + s_k²/(s_k² + σ²)·(x − μ_k)) with responsibilities
    r_k ∝ π_k N(x; μ_k, (s_k² + σ²)I).

    Args:
        means: [K, C, H, W]; stds: [K]; weights: [K] (normalised here).
    """

    def __init__(self, means, stds, weights):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))
        self.register_buffer("stds", torch.as_tensor(stds, dtype=torch.float32))
        w = torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x, sigma, cond=None):
        sigma = as_sigma(sigma, x).reshape(-1, 1)                         # [N, 1]
        xf = x.flatten(1)                                                 # [N, d]
        mu = self.means.flatten(1).to(x.dtype)                            # [K, d]
        var = self.stds.to(x.dtype) ** 2 + sigma**2                       # [N, K]
        d = xf.shape[1]
        sq = (xf[:, None, :] - mu[None]).square().sum(-1)                 # [N, K]
        log_r = self.weights.log() - 0.5 * sq / var - 0.5 * d * var.log()
        r = torch.softmax(log_r, dim=1)                                   # [N, K]
        shrink = self.stds.to(x.dtype) ** 2 / var                         # [N, K]
        comp = mu[None] + shrink[..., None] * (xf[:, None, :] - mu[None]) # [N, K, d]
        return (r[..., None] * comp).sum(1).reshape_as(x)

    def sample(self, n: int, generator=None, sigma: float = 0.0):
        """n draws from the data (σ = 0) or the noised marginal; returns [n, C, H, W]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.means.shape[1:]), generator=generator)
        return self.means[k] + _bc((self.stds[k] ** 2 + sigma**2).sqrt()) * z
