"""Projected gradient descent (Madry et al. 2018) with the options an adaptive evaluation needs:
L∞ / L2, random start, restarts, targeted, CE / CW-margin / KL losses, and EOT (Athalye et al.
2018) over a randomized defense's noise.

Gradients are taken with ``torch.enable_grad()`` so an attack works whatever the caller's grad
mode; the model's train/eval mode is the caller's. EOT accumulates the gradient over ``eot``
forward passes, ``eot_batch`` of them stacked into one forward/backward (default 1: one at a time,
memory of one pass).

Which iterate is returned (``select``): ``last`` (Madry et al.'s x_T) or ``most_fooled``: per
example, the iterate misclassified by the most of its EOT passes — each iterate x_t is scored by
the ``eot`` passes its gradient step already made, the final one by ``eot`` more forward passes —
ties going to the later iterate, so an example no iterate fools gets x_T, as with ``last``. A
randomized defense's last iterate is only one draw of where the attack went; the iterate that
fooled the most passes is the one an attacker who can query the defense would submit.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..images import check_images

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw", "kl")
SELECT = ("last", "most_fooled")


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shape [N]."""
    return v.flatten(1).norm(dim=1)


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The Euclidean projection onto {‖δ‖ ≤ ε}: clamp for L∞, rescale for L2."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * _bc(scale, delta)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j per example: > 0 iff classified as y."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return z_y - other


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, *, targeted: bool = False,
                ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example loss the attacker ascends. ``ce``: cross-entropy (targeted: its negative on
    the target y); ``cw``: −margin(z, y) (Carlini & Wagner's f₆ without κ; targeted: margin to
    the target); ``kl``: KL(p(x) ‖ p(x′)) from the reference log-probabilities (TRADES)."""
    if kind == "ce":
        ce = F.cross_entropy(logits, y, reduction="none")
        return -ce if targeted else ce
    if kind == "cw":
        return margin(logits, y) if targeted else -margin(logits, y)
    return F.kl_div(F.log_softmax(logits, 1), ref_logp, log_target=True, reduction="none").sum(1)


def _check(x, y, eps, alpha, steps, norm, eot, restarts, loss, select="last"):
    check_images(x, name="x")
    if select not in SELECT:
        raise InputError(f"select: expected one of {SELECT}, got {select!r}")
    if norm not in NORMS:
        raise InputError(f"norm: expected one of {NORMS}, got {norm!r}")
    if loss not in LOSSES:
        raise InputError(f"loss: expected one of {LOSSES}, got {loss!r}")
    if not eps >= 0 or not alpha >= 0:
        raise InputError(f"eps, alpha: expected >= 0, got eps={eps!r}, alpha={alpha!r}")
    for name, v in (("steps", steps), ("eot", eot), ("restarts", restarts)):
        if not isinstance(v, int) or v < (0 if name == "steps" else 1):
            raise InputError(f"{name}: expected an integer >= {0 if name == 'steps' else 1}, got {v!r}")
    if not torch.is_tensor(y) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"y: expected int labels of shape [{x.shape[0]}], got {getattr(y, 'shape', type(y).__name__)}")


def random_init(x: torch.Tensor, eps: float, norm: str, generator=None) -> torch.Tensor:
    """δ₀ uniform in the L∞ ball, or uniform in the L2 ball (Gaussian direction, radius ε·U^(1/d))."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d = x[0].numel()
    r = eps * torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return g / _bc(_norm(g).clamp_min(1e-12), x) * _bc(r, x)


def _stack(v: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """v repeated k times along the batch dimension (k copies of the whole batch, in order)."""
    return v if v is None or k == 1 else v.repeat(k, *([1] * (v.ndim - 1)))


def input_gradient(model, x_adv, y, *, loss="ce", eot=1, targeted=False, ref_logp=None, eot_batch=1):
    """∇ₓ of the mean over ``eot`` passes of the per-example loss (summed over the batch, so
    each example gets its own gradient). Returns (gradient, mean loss [N]).

    ``eot_batch``: how many of the ``eot`` passes share one forward/backward, as k copies of the
    batch stacked along its first dimension (k·N rows; k times the activation memory). The
    gradient is the same sum over passes: equal to the one-pass-at-a-time result up to float
    summation order for a deterministic model, and a draw of the same expectation for a randomized
    one (its noise for the k copies is drawn at once: a model that draws once per call may get the
    same stream as k calls in turn, one that draws per solver step, like DiffPure, draws in another
    order)."""
    g, l, _ = _eot_passes(model, x_adv, y, loss, eot, targeted, ref_logp, eot_batch)
    return g, l


def fooled(logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Bool [N]: the attack succeeded on this pass (misclassified, or the target when targeted)."""
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y


def _eot_passes(model, x_adv, y, loss, eot, targeted, ref_logp, eot_batch):
    """(∇ₓ mean loss, mean loss [N], passes fooled [N]) over ``eot`` passes at x_adv."""
    if not isinstance(eot_batch, int) or eot_batch < 1:
        raise InputError(f"eot_batch: expected an integer >= 1, got {eot_batch!r}")
    n = x_adv.shape[0]
    grad = torch.zeros_like(x_adv)
    total = torch.zeros(n, device=x_adv.device)
    wrong = torch.zeros(n, dtype=torch.long, device=x_adv.device)
    with torch.enable_grad():
        done = 0
        while done < eot:
            k = min(eot_batch, eot - done)
            xi = x_adv.detach().requires_grad_(True)
            z = model(_stack(xi, k))
            l = attack_loss(z, _stack(y, k), loss, targeted=targeted, ref_logp=_stack(ref_logp, k))
            # a model whose output does not depend on x through autograd has gradient 0 there
            g = torch.autograd.grad(l.sum(), xi)[0] if l.requires_grad else torch.zeros_like(xi)
            grad += g
            total += l.detach().reshape(k, n).sum(0)
            wrong += fooled(z.detach(), _stack(y, k), targeted).reshape(k, n).sum(0)
            done += k
    return grad / eot, total / eot, wrong


@torch.no_grad()
def _count_fooled(model, x, y, eot, targeted, eot_batch) -> torch.Tensor:
    """Passes fooled [N] over ``eot`` forward passes at x (no gradient)."""
    wrong, done = torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 0
    while done < eot:
        k = min(eot_batch, eot - done)
        wrong += fooled(model(_stack(x, k)), _stack(y, k), targeted).reshape(k, -1).sum(0)
        done += k
    return wrong


def _ascent(g: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return g.sign()
    return g / _bc(_norm(g).clamp_min(1e-12), g)


@torch.no_grad()
def _mean_margin(model, x, y, eot, targeted):
    z = sum(model(x).float() for _ in range(eot)) / eot
    m = margin(z, y)
    return -m if targeted else m


def pgd(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int, norm: str = "linf",
        eot: int = 1, random_start: bool = True, restarts: int = 1, loss: str = "ce", targeted: bool = False,
        generator=None, x_ref_logits: torch.Tensor | None = None, eot_batch: int = 1,
        select: str = "last") -> torch.Tensor:
    """PGD: x′ ← Π_{B_ε(x) ∩ [0,1]}(x′ + α·step(∇ₓ L)), with step = sign (L∞) or ∇/‖∇‖ (L2).

    Args:
        model: pixel images N×C×H×W in [0, 1] → logits N×K (may be randomized: use ``eot``).
        y: labels [N] (the target labels when ``targeted``).
        eps, alpha, steps: budget ε, step size α, iterations. ε = 0 returns x.
        eot: gradient samples per step (Expectation over Transformation).
        eot_batch: EOT samples per forward/backward pass (:func:`input_gradient`).
        restarts: independent random starts; per example the one with the lowest final margin
            (mean logits over ``eot`` passes) is kept (``most_fooled``: the iterate of any restart
            fooled by the most passes).
        select: ``last`` or ``most_fooled`` (the module's docstring).
        loss: ``ce``, ``cw`` (margin) or ``kl`` (TRADES; reference logits from ``x_ref_logits``
            or model(x)).
    Returns x_adv with ‖x_adv − x‖ ≤ ε and values in [0, 1].
    """
    _check(x, y, eps, alpha, steps, norm, eot, restarts, loss, select)
    x = x.detach()
    if eps == 0 or steps == 0 and not random_start:
        return x.clone()
    ref_logp = None
    if loss == "kl":
        with torch.no_grad():
            ref = x_ref_logits if x_ref_logits is not None else model(x)
            ref_logp = F.log_softmax(ref.detach().float(), 1)
    best, best_m = x.clone(), torch.full((x.shape[0],), math.inf, device=x.device)
    most = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)     # passes fooled by `best`

    def keep(x_t, wrong):                 # most_fooled: x_t where it fooled at least as many passes
        take = wrong >= most
        best[take], most[take] = x_t[take], wrong[take]

    for _ in range(restarts):
        delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
        x_adv = (x + project(delta, eps, norm)).clamp(0, 1)
        for _ in range(steps):
            g, _, wrong = _eot_passes(model, x_adv, y, loss, eot, targeted, ref_logp, eot_batch)
            if select == "most_fooled":
                keep(x_adv, wrong)
            x_adv = x + project(x_adv + alpha * _ascent(g, norm) - x, eps, norm)
            x_adv = x_adv.clamp(0, 1).detach()
        if select == "most_fooled":
            keep(x_adv, _count_fooled(model, x_adv, y, eot, targeted, eot_batch))
            continue
        if restarts == 1:
            return x_adv
        m = _mean_margin(model, x_adv, y, eot, targeted)
        better = m < best_m
        best[better], best_m[better] = x_adv[better], m[better]
    return best
