"""AutoAttack (Croce & Hein 2020) through the original code (``pyautoattack``), and torchattacks'
PGD as an independent cross-check of :func:`~trustdiff.attacks.pgd`.

``version="standard"``: APGD-CE, APGD-T, FAB-T, Square. ``version="rand"``: APGD-CE and
APGD-DLR with EOT over 20 passes, for randomized defenses. AutoAttack leaves the model's
train/eval mode as it is; it only attacks points the model classifies correctly on a first pass.
"""
from __future__ import annotations

import logging

import torch

from ..errors import InputError
from ..images import check_images

_NORMS = {"linf": "Linf", "l2": "L2"}


def autoattack(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", version: str = "standard",
               seed: int = 0, batch_size: int = 250, verbose: bool = False) -> torch.Tensor:
    """AutoAttack's adversarial examples for (x, y) on x's device."""
    from pyautoattack import AutoAttack

    check_images(x, name="x")
    if norm not in _NORMS:
        raise InputError(f"norm: expected one of {sorted(_NORMS)}, got {norm!r}")
    if version not in ("standard", "rand"):
        raise InputError(f"version: expected 'standard' or 'rand', got {version!r}")
    if eps == 0:
        return x.detach().clone()
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    if k < 4:  # the DLR losses read the 3rd and 4th largest logits
        raise InputError(f"autoattack: expected a model with at least 4 classes (DLR loss), got {k}")
    logging.getLogger("auto-attack").setLevel(logging.INFO if verbose else logging.WARNING)
    aa = AutoAttack(model, eps=float(eps), norm=_NORMS[norm], version=version, seed=seed, device=x.device)
    aa.verbose = verbose
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, k - 1)   # all classes up to 10
    with torch.enable_grad():
        out, _ = aa.run_standard_evaluation(x.detach(), y, batch_size=batch_size)
    return out.detach().clamp(0, 1)


def torchattacks_pgd(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                     norm: str = "linf") -> torch.Tensor:
    """torchattacks' PGD (L∞) / PGDL2 with a random start, for cross-checking."""
    import torchattacks

    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    atk = cls(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    return atk(x, y).detach()
