"""DiffPure (Nie et al., *Diffusion Models for Adversarial Purification*, ICML 2022).

An input x (pixels in [0, 1]) is diffused to time t* of the VP SDE and solved back to t = 0 with
the diffusion model; the classifier sees the result. In the σ-space of the Denoiser contract the
VP SDE is a VE SDE of x/√ᾱ(t) (σ(t)² = 1/ᾱ(t) − 1, so d(σ²)/dt = β(t)(1 + σ²)), and the reverse
VP SDE maps exactly onto :func:`~trustdiff.diffusion.samplers.euler_maruyama` over the levels
σ(t) on DiffPure's uniform time grid. Diffusing to t* is x_σ = x₀ + σ(t*)·ε (model units).

Nothing here disables autograd: :class:`PurifiedClassifier` is differentiable end to end, so an
attacker gets the full gradient through every solver step (Lee & Kim 2023). Memory for that
gradient is bounded by ``checkpoint=True`` (each denoiser call is recomputed in the backward
pass instead of stored).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..diffusion import samplers
from ..diffusion.losses import randn_like
from ..diffusion.schedules import karras_sigmas, vp_sigma
from ..errors import InputError
from ..images import check_images, clamp_pixel, to_model, to_pixel

# the reverse solvers: "sde" is DiffPure's (Euler–Maruyama on the reverse SDE, uniform in t);
# "ddpm" the ancestral sampler (the exact Gaussian posterior step); "ode" Heun on the probability-
# flow ODE and "euler"/"ddim" its first-order forms (deterministic after the forward noise)
SOLVERS = {
    "sde": samplers.euler_maruyama,
    "ddpm": samplers.ddpm_ancestral,
    "ode": samplers.heun,
    "euler": samplers.euler,
    "ddim": samplers.ddim,
}
UNIFORM_T = ("sde", "ddpm")          # DiffPure's grid; the ODE solvers walk EDM's ρ = 7 grid
SIGMA_MIN = 0.002                    # EDM's σ_min (model units), the ODE grid's last level before 0


def check_t_star(t_star: float) -> float:
    if not isinstance(t_star, (int, float)) or not 0 < float(t_star) <= 1:
        raise InputError(f"t_star: expected a diffusion time in (0, 1], got {t_star!r}")
    return float(t_star)


def sigma_star(t_star: float) -> float:
    """σ(t*) of the VP SDE (β_min = 0.1, β_max = 20, as DiffPure) in model units ([-1, 1] images)."""
    return float(vp_sigma(check_t_star(t_star)))


def purification_sigmas(t_star: float, steps: int, solver: str = "sde", *, device=None) -> torch.Tensor:
    """The decreasing levels the reverse solver walks from σ(t*) to 0: [steps + 1] values.
    ``sde``/``ddpm``: σ(t_i) at t_i = t*·(1 − i/steps) (DiffPure's uniform grid; the last step
    returns the denoised estimate); ODE solvers: EDM's ρ = 7 grid from σ(t*) to σ_min, then 0."""
    if solver not in SOLVERS:
        raise InputError(f"solver: expected one of {sorted(SOLVERS)}, got {solver!r}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps: expected an integer >= 1, got {steps!r}")
    s_max = sigma_star(t_star)
    if solver in UNIFORM_T:
        t = torch.linspace(t_star, 0.0, steps + 1, dtype=torch.float64)
        sig = vp_sigma(t)
        sig[-1] = 0.0
        return sig.to(device=device, dtype=torch.float32)
    if steps == 1:
        return torch.tensor([s_max, 0.0], device=device)
    return karras_sigmas(steps, min(SIGMA_MIN, s_max / 2), s_max, device=device)


class _Recompute(torch.autograd.Function):
    """y = D(x; σ, cond) keeping only x for the backward pass, which recomputes D with gradients
    and returns its vector–Jacobian product in x (for a denoiser whose parameters are frozen)."""

    @staticmethod
    def forward(ctx, x, denoiser, sigma, cond):
        ctx.denoiser, ctx.sigma, ctx.cond = denoiser, sigma, cond
        ctx.save_for_backward(x)
        with torch.no_grad():
            return denoiser(x, sigma, cond)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            (grad_x,) = torch.autograd.grad(ctx.denoiser(xd, ctx.sigma, ctx.cond), xd, grad_out)
        return grad_x, None, None, None


class Checkpointed(nn.Module):
    """A Denoiser whose activations are recomputed in the backward pass: a full-gradient attack
    through K solver steps then stores K inputs instead of K networks' activations. Same values
    and gradients as the wrapped denoiser (which must be deterministic: eval mode, no dropout).

    With frozen parameters (an attack's case) each call keeps only its input x
    (:class:`_Recompute`): bench/throughput.py measures the peak memory of a 100-step attack at
    1.14× that of one step. torch's non-reentrant ``checkpoint`` kept far more than the inputs
    through the diffusers UNet here; it is used when a parameter needs a gradient (fine-tuning
    through the sampler)."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x, sigma, cond=None):
        if not torch.is_grad_enabled():
            return self.denoiser(x, sigma, cond)
        if any(p.requires_grad for p in self.denoiser.parameters()):
            return _checkpoint(self.denoiser, x, sigma, cond, use_reentrant=False)
        return _Recompute.apply(x, self.denoiser, sigma, cond)


def diffuse(x0: torch.Tensor, s: float, generator=None) -> torch.Tensor:
    """x_σ = x₀ + σ·ε, ε ~ N(0, I): the forward VP SDE to t* in σ space (model units)."""
    return x0 + s * randn_like(x0, generator)


def purify(x: torch.Tensor, denoiser: nn.Module, t_star: float, *, solver: str = "sde", steps: int = 10,
           cond=None, generator=None, checkpoint: bool = False) -> torch.Tensor:
    """Purify pixel images x (N×C×H×W in [0, 1]): diffuse to t*, solve back with ``solver`` in
    ``steps`` steps, return pixels in [0, 1]. ``cond``: the denoiser's conditioning (None: the
    unconditional / null-class model). ``generator``: one torch.Generator or one per image.
    Differentiable in x (and in the denoiser's parameters)."""
    check_images(x, name="x")
    sigmas = purification_sigmas(t_star, steps, solver, device=x.device)
    den = Checkpointed(denoiser) if checkpoint else denoiser
    x_t = diffuse(to_model(x), float(sigmas[0]), generator)
    x0 = SOLVERS[solver](den, x_t, sigmas, cond=cond, generator=generator)
    return clamp_pixel(to_pixel(x0))


def nfe(solver: str, steps: int) -> int:
    """Denoiser evaluations per purification."""
    return samplers.nfe("heun" if solver == "ode" else solver, steps)


def vote(logits: torch.Tensor, votes: int) -> torch.Tensor:
    """log((1/K) Σ_k softmax(z_k)): the log of the mean class probability over K purifications
    stacked as K blocks of N rows ([K·N, C] → [N, C]). Its argmax is the averaged-probability
    vote; as logits, cross-entropy on it is −log of the mean probability of the label."""
    logp = torch.log_softmax(logits.float(), 1).reshape(votes, -1, logits.shape[1])
    return torch.logsumexp(logp, 0) - math.log(votes)


class PurifiedClassifier(nn.Module):
    """classifier(purify(x)): DiffPure as one randomized, differentiable nn.Module.

    Every call draws fresh diffusion noise (from ``generator`` when given, else torch's global
    RNG), so the defense is randomized: attack it with EOT (the attacks' soundness checks detect
    this and insist). ``forward(x)``: x N×C×H×W in [0, 1] → logits N×K.

    ``votes`` = K > 1: a majority vote over K independent purifications, by averaging the
    classifier's probabilities (:func:`vote`), not by counting argmaxes: a count is piecewise
    constant in x (zero gradient almost everywhere, a defense that hides its gradient from the
    attacker), the mean probability is differentiable and its argmax is the vote of the soft
    predictions. The K purifications run as one batch of K·N rows; cost K× one purification.
    EOT over a voting defense averages over K·EOT purifications.

    Args:
        classifier: pixel-space N×C×H×W in [0, 1] → logits.
        denoiser: a Denoiser ``D(x, sigma, cond=None)`` in model space.
        t_star: diffusion time in (0, 1] (DiffPure used 0.1 for CIFAR-10 L∞ 8/255).
        solver, steps: the reverse solver (see :data:`SOLVERS`) and its number of steps.
        checkpoint: recompute denoiser activations in the backward pass (bounded memory).
        votes: purifications per prediction, averaged (above).

    ``steps=1`` (any solver) is one-shot denoising, x̂ = D(x + σ(t*)·ε; σ(t*)): the one-step
    denoiser of Carlini et al. 2023 used as a purifier.
    """

    def __init__(self, classifier: nn.Module, denoiser: nn.Module, t_star: float, *, solver: str = "sde",
                 steps: int = 10, cond=None, generator=None, checkpoint: bool = False, votes: int = 1):
        super().__init__()
        purification_sigmas(t_star, steps, solver)          # validates all three
        if not isinstance(votes, int) or votes < 1:
            raise InputError(f"votes: expected an integer >= 1, got {votes!r}")
        self.classifier, self.denoiser = classifier, denoiser
        self.t_star, self.solver, self.steps, self.votes = float(t_star), solver, steps, votes
        self.cond, self.generator, self.checkpoint = cond, generator, checkpoint

    @property
    def config(self) -> dict:
        return {"t_star": self.t_star, "solver": self.solver, "steps": self.steps, "votes": self.votes,
                "nfe": self.votes * nfe(self.solver, self.steps), "sigma_star_model": sigma_star(self.t_star),
                "checkpoint": self.checkpoint}

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return purify(x, self.denoiser, self.t_star, solver=self.solver, steps=self.steps, cond=self.cond,
                      generator=self.generator, checkpoint=self.checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.votes == 1:
            return self.classifier(self.purify(x))
        k, saved = self.votes, self.generator
        if isinstance(saved, (list, tuple)):        # one generator per image: it draws for its K copies in turn
            self.generator = list(saved) * k
        try:
            x_k = self.purify(x.repeat(k, *([1] * (x.ndim - 1))))
        finally:
            self.generator = saved
        return vote(self.classifier(x_k), k)
