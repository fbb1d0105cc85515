"""The adversarial training objectives, per example.

TRADES (Zhang et al. 2019, as used by Wang et al. 2023 with label smoothing 0.1):

    L(x, y) = CE_ls(f(x), y) + β · KL(p(x) ‖ p(x′)),   x′ ≈ argmax_{‖x′−x‖≤ε} KL(p(x) ‖ p(x′))

with p = softmax ∘ f, the KL summed over classes (TRADES' ``KLDivLoss(reduction="sum")`` divided by
the batch size is the batch mean of this), and the gradient flowing through both p(x) and p(x′).

Madry et al. 2018 (PGD-AT): L(x, y) = CE_ls(f(x′), y), x′ ≈ argmax CE(f(x′), y).

x′ comes from :func:`trustdiff.attacks.pgd` with the network in eval mode (as the TRADES reference
does, so the attack does not move BatchNorm statistics), starting uniformly in the ε-ball (TRADES'
reference starts at x + 0.001·N(0, I); the uniform start is at least as strong).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd
from ..errors import InputError

METHODS = ("trades", "madry")


def smooth_ce(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against (1 − s)·onehot(y) + s/K, per example; ``y`` int labels [B] or class
    probabilities [B, K] (CutMix's mixed targets), smoothed the same way."""
    return F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p(x) ‖ p(x′)) per example, summed over classes."""
    logp, logq = F.log_softmax(logits_clean, 1), F.log_softmax(logits_adv, 1)
    return (logp.exp() * (logp - logq)).sum(1)


def trades_loss(logits_clean, logits_adv, y, *, beta: float, smoothing: float = 0.1) -> torch.Tensor:
    """CE_ls(f(x), y) + β·KL(p(x) ‖ p(x′)), per example."""
    return smooth_ce(logits_clean, y, smoothing) + beta * trades_kl(logits_clean, logits_adv)


def madry_loss(logits_adv, y, *, smoothing: float = 0.1) -> torch.Tensor:
    """CE_ls(f(x′), y), per example."""
    return smooth_ce(logits_adv, y, smoothing)


class eval_mode:
    """Put a network in eval mode for the block, then restore its mode (BatchNorm statistics are
    neither used per batch nor updated while the attack runs)."""

    def __init__(self, net: nn.Module):
        self.net, self.was = net, net.training

    def __enter__(self):
        self.net.eval()
        return self.net

    def __exit__(self, *exc):
        self.net.train(self.was)


def adversary(net, x, y, *, method: str, eps: float, alpha: float, steps: int, norm: str = "linf",
              generator=None) -> torch.Tensor:
    """The training attack's x′ for ``method``: PGD on KL(p(x) ‖ p(·)) (TRADES) or on CE (Madry)."""
    with eval_mode(net):
        if method == "trades":
            return pgd(net, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, loss="kl", generator=generator)
        return pgd(net, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, loss="ce", generator=generator)


def adversarial_loss_fn(method: str = "trades", *, eps: float, alpha: float, steps: int = 10, norm: str = "linf",
                        beta: float = 5.0, smoothing: float = 0.1, augment: str = "none", num_classes: int | None = None,
                        flip: bool = True):
    """``loss_fn(net, x, y, generator) -> [B]`` for :func:`trustdiff.train.fit`: the batch
    augmented (:func:`trustdiff.advtrain.augment.augment`, from the loop's generator; ``flip``: with
    its horizontal flip), the attack on
    the augmented images, then the TRADES or Madry loss with the network in training mode. Under
    CutMix the loss's cross-entropy takes the mixed targets and Madry's attack the larger label."""
    from .augment import augment as augment_batch, check_augment

    if method not in METHODS:
        raise InputError(f"method: expected one of {METHODS}, got {method!r}")
    if not beta >= 0 or not 0 <= smoothing < 1:
        raise InputError(f"beta >= 0 and smoothing in [0, 1): got beta={beta!r}, smoothing={smoothing!r}")
    if check_augment(augment) != "none" and not (isinstance(num_classes, int) and num_classes >= 2):
        raise InputError(f"augment {augment!r}: expected num_classes >= 2, got {num_classes!r}")

    def loss_fn(net, x, y, generator):
        target = y
        if augment != "none":
            x, target = augment_batch(augment, x, y, num_classes, generator, flip=flip)
            y = target.argmax(1)
        x_adv = adversary(net, x, y, method=method, eps=eps, alpha=alpha, steps=steps, norm=norm, generator=generator)
        if method == "trades":
            # two passes, as the reference: in training mode BatchNorm normalizes each batch by itself
            return trades_loss(net(x), net(x_adv), target, beta=beta, smoothing=smoothing)
        return madry_loss(net(x_adv), target, smoothing=smoothing)

    return loss_fn
