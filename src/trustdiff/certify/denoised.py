"""Denoised smoothing with an off-the-shelf diffusion model: Carlini, Tramèr, Dvijotham, Rice,
Sun & Kolter, *(Certified!!) Adversarial Robustness for Free!* (ICLR 2023), Algorithm 1
(NOISEANDCLASSIFY / DENOISE).

Their step: given x + δ with δ ~ N(0, σ²I), pick t* with (1 − ᾱ_t*)/ᾱ_t* = σ² (noise in model
units), form x_t* = √ᾱ_t*·(x + δ), run the diffusion model once to estimate the clean image,
classify it. Here the Denoiser contract already works in σ space (EDM form, x = x₀ + σ·n): the
scaled state is x_t = √ᾱ·x, and :class:`~trustdiff.diffusion.DiffusersDenoiser` applies that √ᾱ
itself, so the paper's step is D(to_model(x + δ), σ_model) followed by ``to_pixel``.

Soundness does not depend on this module: :class:`~trustdiff.certify.Smooth` certifies whatever
function it is given, with the σ it actually added. The choices here (σ_model, the step count)
decide how accurate the smoothed classifier is, not whether its radii are valid.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from ..diffusion import samplers
from ..diffusion.schedules import karras_sigmas
from ..errors import InputError
from ..images import clamp_pixel, sigma_to_model, to_model, to_pixel
from .smooth import check_sigma

#: deterministic samplers a multi-step denoise may use (no fresh noise inside the classifier)
DETERMINISTIC = ("heun", "euler", "ddim")


def model_sigma(denoiser, sigma: float) -> float:
    """The noise level to tell ``denoiser`` for pixel noise σ: σ_model = 2σ
    (:func:`~trustdiff.images.sigma_to_model`). For a discrete-time model (one with
    ``timestep_at_least``, e.g. a diffusers DDPM through its adapter) it is the σ_t of the first
    training step with σ_t ≥ σ_model: rounded up to a step the network was trained at, never
    down, so the model is never told less noise than the input holds."""
    s = sigma_to_model(check_sigma(sigma))
    if not hasattr(denoiser, "timestep_at_least"):
        return s
    try:
        t = denoiser.timestep_at_least(s)
    except ValueError as e:
        raise InputError(f"sigma: {sigma} (model units {s:.4g}) is beyond this diffusion model's noise range ({e})") from None
    return max(float(denoiser.sigmas[int(t.reshape(-1)[0])]), s)


class DenoisedClassifier(nn.Module):
    """f(x + δ) = classifier(clamp(to_pixel(D(to_model(x + δ); σ_model)), 0, 1)): a diffusion
    denoiser in front of an off-the-shelf classifier, the base classifier of Carlini et al.

    Differentiable end to end (no ``no_grad`` inside; the clamp passes gradients inside [0, 1]),
    so attacks can run through it.

    Args:
        denoiser: any Denoiser ``D(x, sigma, cond=None) -> x0_hat`` in model space [-1, 1].
        classifier: pixel-space N×C×H×W in [0, 1] → logits N×K.
        sigma: σ of the noise already in the input, in [0, 1]-pixel units (Smooth's σ).
        steps: 1 for the paper's one-shot denoise; more runs that many levels of a deterministic
            sampler from σ_model down to 0 (EDM's ρ = 7 spacing; Heun's NFE is 2·steps − 1).
        sampler: ``"heun"``, ``"euler"`` or ``"ddim"`` (η = 0) for ``steps > 1``.
        sigma_min: the smallest positive level of a multi-step walk; default: the denoiser's
            ``sigma_min`` if it has one, else 0.002 (EDM).

    ``forward(x)``: the noisy image x + δ, N×C×H×W in pixel units (not range-checked: it holds
    noise) → logits N×K. ``denoise(x)`` → the pixel-space estimate in [0, 1].
    """

    def __init__(self, denoiser, classifier, sigma: float, *, steps: int = 1, sampler: str = "heun",
                 sigma_min: float | None = None):
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise InputError(f"steps: expected an integer >= 1, got {steps!r}")
        if sampler not in DETERMINISTIC:
            raise InputError(f"sampler: expected one of {', '.join(DETERMINISTIC)}, got {sampler!r}")
        self.denoiser, self.classifier = denoiser, classifier
        self.sigma = check_sigma(sigma)
        self.sigma_model = model_sigma(denoiser, self.sigma)
        self.steps, self.sampler = int(steps), sampler
        self.sigma_min = float(sigma_min if sigma_min is not None else getattr(denoiser, "sigma_min", 0.002))

    def levels(self) -> torch.Tensor:
        """The noise levels walked, float64 [steps + 1]: σ_model first (exactly), 0 last."""
        if self.steps == 1:
            return torch.tensor([self.sigma_model, 0.0], dtype=torch.float64)
        s_min = min(self.sigma_min, 0.5 * self.sigma_model)
        s = karras_sigmas(self.steps, s_min, self.sigma_model, dtype=torch.float64)
        s[0] = self.sigma_model
        return s

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """x + δ (pixel units, N×C×H×W) → estimate of x in [0, 1], N×C×H×W."""
        x_model = to_model(x)                         # noise std becomes σ_model = 2σ
        if self.steps == 1:
            x0 = self.denoiser(x_model, self.sigma_model)
        else:
            x0 = samplers.SAMPLERS[self.sampler](self.denoiser, x_model, self.levels())
        return clamp_pixel(to_pixel(x0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoise(x))
