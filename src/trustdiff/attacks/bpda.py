"""BPDA (Athalye, Carlini & Wagner 2018): the forward pass of a transform f, the backward pass of
a differentiable approximation g (identity by default): g(x) + (f(x) − g(x)).detach()."""
from __future__ import annotations

from torch import nn


class BPDA(nn.Module):
    """Value f(x), gradient ∂g/∂x. ``transform`` and ``approx`` map x → x-shaped tensors."""

    def __init__(self, transform, approx=None):
        super().__init__()
        self.transform, self.approx = transform, approx

    def forward(self, x):
        g = x if self.approx is None else self.approx(x)
        return g + (self.transform(x) - g).detach()


class BPDAClassifier(nn.Module):
    """classifier(BPDA(transform)(x)): the attacker's surrogate for a defense that runs
    ``transform`` before ``classifier`` (e.g. DiffPure's purification)."""

    def __init__(self, classifier: nn.Module, transform, approx=None):
        super().__init__()
        self.classifier, self.bpda = classifier, BPDA(transform, approx)

    def forward(self, x):
        return self.classifier(self.bpda(x))
