"""How an adversarial input is scored against a randomized defense (the protocols).

A randomized defense (DiffPure: fresh diffusion noise on every call) gives a different answer
each time the same input is submitted, so "robust accuracy" depends on what the attacker may do:

  one          one forward pass of the final adversarial input: the protocol of DiffPure
               (Nie et al. 2022) and of Lee & Kim 2023;
  worst_of_n   N independent passes; an example is robust only if all N are correct — an
               attacker who may submit the input N times (the N-evaluation robustness of Wang et
               al. 2024, *DiffHammer*). The first of the N passes is the one-evaluation pass, so
               worst-of-N ≤ one-evaluation on every example and N = 1 is the one-evaluation
               figure. The expected accuracy over the N passes is reported beside it;
  fixed        the defense's randomness is fixed by a seed the attacker knows (the deterministic
               white-box setting of Liu et al. 2024, *Towards Better Adversarial Purification via
               Adversarial Denoising Diffusion Training*): :class:`FixedRandomness` turns the
               defense into a deterministic function of its input, which is attacked without EOT
               and evaluated with the same draw.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..metrics.intervals import bounded_mean, proportion

PROTOCOLS = ("one", "worst_of_n", "fixed")


@torch.no_grad()
def correct(model, x, y, batch_size: int = 256) -> torch.Tensor:
    """Bool [N]: one forward pass per input."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size] for i in range(0, len(x), batch_size)])


def evaluations(model, x, y, n_evals: int, batch_size: int = 256) -> torch.Tensor:
    """Bool [n_evals, N]: ``n_evals`` independent passes over every input, in turn."""
    if not isinstance(n_evals, int) or n_evals < 1:
        raise InputError(f"n_evals: expected an integer >= 1, got {n_evals!r}")
    return torch.stack([correct(model, x, y, batch_size) for _ in range(n_evals)])


def score(clean: torch.Tensor, evals: torch.Tensor) -> dict:
    """The protocols' figures for one attack from the clean mask [N] (one pass) and the passes at
    the adversarial inputs [E, N]: ``one`` (clean and the first pass correct), ``worst_of_n``
    (clean and all E passes correct), ``expected`` (clean times the fraction of passes correct,
    averaged over examples, Hoeffding interval), each with its n."""
    n_evals, n = evals.shape
    ok = evals & clean[None]
    return {"one": proportion(int(ok[0].sum()), n), "worst_of_n": proportion(int(ok.all(0).sum()), n),
            "expected": bounded_mean(ok.double().mean(0)), "n_evals": n_evals}


class FixedRandomness(nn.Module):
    """A randomized defense with its noise fixed: on every call image i draws its noise from its
    own generator seeded ``seed`` (the per-image generators of :func:`trustdiff.diffusion.losses.
    randn_like`), so the output is a deterministic function of the input alone — the same
    whatever the batch it is in, and the same draw for the attacker and for the evaluation.

    The wrapped model must take its noise from a ``generator`` attribute, as
    :class:`trustdiff.purify.PurifiedClassifier` does (a list of one generator per image)."""

    def __init__(self, model: nn.Module, seed: int):
        super().__init__()
        if not hasattr(model, "generator"):
            raise InputError(f"fixed randomness: expected a model that draws its noise from a `generator` attribute "
                             f"(e.g. PurifiedClassifier), got {type(model).__name__}")
        self.model, self.seed = model, int(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = self.model.generator
        self.model.generator = [torch.Generator().manual_seed(self.seed) for _ in range(x.shape[0])]
        try:
            return self.model(x)
        finally:
            self.model.generator = saved
