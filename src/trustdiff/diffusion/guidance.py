"""Guidance as Denoiser → Denoiser wrappers (both are nn.Modules an attacker can differentiate)."""
from __future__ import annotations

import torch
from torch import nn

from .precond import _bc, as_sigma


def _null_like(null_cond, cond):
    """The null condition shaped like ``cond``: a label tensor filled with the null label, or a
    null embedding expanded to the batch."""
    if torch.is_tensor(null_cond) and null_cond.ndim > 0:
        return null_cond.to(cond.device, cond.dtype).expand_as(cond)
    return torch.full_like(cond, int(null_cond) if not cond.is_floating_point() else float(null_cond))


class ClassifierFreeGuidance(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2021) in x̂₀ form:
    D_w(x; σ, c) = D(x; σ, ∅) + w·(D(x; σ, c) − D(x; σ, ∅)).

    w = 0 is the unconditional denoiser, w = 1 the conditional one, w > 1 extrapolates.
    ``null_cond`` is the null label (int) or a null embedding broadcastable to ``cond``. Both
    branches run in one batched call.
    """

    def __init__(self, denoiser, scale: float, null_cond):
        super().__init__()
        self.denoiser, self.scale, self.null_cond = denoiser, float(scale), null_cond

    def forward(self, x, sigma, cond=None):
        if cond is None:
            return self.denoiser(x, sigma, None)
        null = _null_like(self.null_cond, cond)
        sigma = as_sigma(sigma, x)
        D = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([null, cond]))
        D_uncond, D_cond = D.chunk(2)
        return D_uncond + self.scale * (D_cond - D_uncond)


class ClassifierGuidance(nn.Module):
    """Classifier guidance (Dhariwal & Nichol 2021) in x̂₀ form. Adding w·∇ₓlog p(y | x; σ) to
    the score (D − x)/σ² gives D̃ = D + w·σ²·∇ₓlog p(y | x; σ).

    ``classifier(x, sigma) -> logits [N, K]`` is noise-aware and takes model-space x. ``cond``
    holds the target labels y. The guidance gradient keeps its graph when the caller records
    gradients (so the wrapped sampler stays differentiable).
    """

    def __init__(self, denoiser, classifier, scale: float):
        super().__init__()
        self.denoiser, self.classifier, self.scale = denoiser, classifier, float(scale)

    def grad_log_p(self, x, sigma, y):
        """∇ₓ log p(y | x; σ), shaped like x."""
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            x_in = x if (outer and x.requires_grad) else x.detach().requires_grad_(True)
            log_p = torch.log_softmax(self.classifier(x_in, sigma), dim=1)
            selected = log_p.gather(1, y.reshape(-1, 1)).sum()
            (g,) = torch.autograd.grad(selected, x_in, create_graph=outer and x.requires_grad)
        return g

    def forward(self, x, sigma, cond=None):
        D = self.denoiser(x, sigma, None)
        if cond is None or self.scale == 0:
            return D
        sigma = as_sigma(sigma, x)
        return D + self.scale * _bc(sigma) ** 2 * self.grad_log_p(x, sigma, cond)
