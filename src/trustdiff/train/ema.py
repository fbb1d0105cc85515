"""Exponential moving average of the weights: EDM's half-life in images with ramp-up, or a fixed
decay τ with a dynamic warm-up.

Karras et al. 2022 (EDM), ``training/training_loop.py``: the EMA half-life is given in images
(``ema_halflife_kimg``) and, early on, capped at a fraction of the images seen so far
(``ema_rampup_ratio``), so the average forgets the random initialisation quickly.

Wang et al. 2023 (*Better Diffusion Models Further Improve Adversarial Training*, after Gowal et
al. 2020): τ = 0.995 per step; the average is the model itself during the LR warm-up, then its
decay is min(τ, (1 + δ)/(10 + δ)) for δ updates past the warm-up.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, on the same device, to hold the average."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def ema_beta(cur_nimg: int, batch_size: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """EDM's per-step decay: ``0.5 ** (batch_size / ema_nimg)``.

    Args:
        cur_nimg: images seen so far, this step's batch included.
        batch_size: images per step (global).
        halflife_kimg: half-life in thousands of images.
        rampup_ratio: if set, the half-life is at most ``cur_nimg * rampup_ratio``.
    """
    ema_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup_ratio)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def ema_beta_dynamic(step: int, tau: float, warmup_steps: int) -> float:
    """Wang et al.'s per-step decay after update ``step`` (0-based): 0 during the warm-up, then
    min(τ, (1 + δ)/(10 + δ)) with δ = step − warmup_steps."""
    delta = step - warmup_steps
    if delta < 0:
        return 0.0
    return min(tau, (1.0 + delta) / (10.0 + delta))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema <- beta * ema + (1 - beta) * model`` for parameters; buffers (e.g. norm statistics)
    are copied, since averaging them has no meaning."""
    for p_ema, p_net in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))
    for b_ema, b_net in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b_net)
