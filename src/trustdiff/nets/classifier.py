"""Classifiers that take pixel-space images: N×C×H×W in [0, 1].

Normalization is the network's first layer (as in Cohen et al.'s smoothing code), so noise levels
and attack budgets mean one thing everywhere: [0, 1]-pixel units. GroupNorm rather than BatchNorm:
the output of one image does not depend on the rest of the batch, and ``train()``/``eval()`` do not
change the function an attacker differentiates.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv → GroupNorm → ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A compact conv net: three stages of conv-GroupNorm-ReLU (width w, 2w, 4w; stride 2 between
    stages), global average pooling, a linear head. ~0.3M parameters at width 32.

    Args:
        in_channels: C of the input, 1 or 3 (or 4).
        num_classes: K, the number of logits.
        width: w, channels of the first stage.
        resolution: H = W the net is built for (divisible by 4, at least 8); inputs must match.

    ``forward(x)``: x N×C×H×W in [0, 1] → logits N×K. ``features(x)`` → N×4w penultimate
    features (after pooling, ≥ 0). ``config`` holds the constructor kwargs (JSON-able), so
    ``SmallCNN(**net.config)`` rebuilds the architecture for a state dict.
    """

    arch = "small-cnn"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, resolution: int = 16):
        super().__init__()
        if in_channels not in (1, 3, 4):
            raise InputError(f"SmallCNN: expected in_channels 1, 3 or 4, got {in_channels}")
        if num_classes < 2 or width < 1:
            raise InputError(f"SmallCNN: expected num_classes >= 2 and width >= 1, got {num_classes}, {width}")
        if resolution < 8 or resolution % 4:
            raise InputError(f"SmallCNN: expected a resolution divisible by 4 and >= 8, got {resolution}")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width, resolution=resolution)
        w = width
        self.body = nn.Sequential(
            _block(in_channels, w), _block(w, w),                 # H×W
            _block(w, 2 * w, stride=2), _block(2 * w, 2 * w),     # H/2×W/2
            _block(2 * w, 4 * w, stride=2), _block(4 * w, 4 * w), # H/4×W/4
        )
        self.head = nn.Linear(4 * w, num_classes)
        self.feature_dim = 4 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: x N×C×H×W in [0, 1] → N×4w (pooled ReLU outputs, ≥ 0)."""
        c, r = self.config["in_channels"], self.config["resolution"]
        if x.ndim != 4 or x.shape[1] != c or x.shape[-2:] != (r, r):
            raise InputError(f"SmallCNN: expected N×{c}×{r}×{r} images, got shape {tuple(x.shape)}")
        h = (x - 0.5) / 0.5  # normalization is the first layer: [0, 1] → [-1, 1]
        return self.body(h).mean(dim=(2, 3))  # global average pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: x N×C×H×W in [0, 1] → N×num_classes."""
        return self.head(self.features(x))


#: classifier names → constructors; ``build_classifier(name, **net.config)`` rebuilds a net
CLASSIFIERS: dict[str, type[nn.Module]] = {
    "small-cnn": SmallCNN,
}


def build_classifier(name: str, **kw) -> nn.Module:
    """Build a classifier by name (see :data:`CLASSIFIERS`) with its constructor kwargs.

    Every classifier takes pixel-space N×C×H×W in [0, 1] and returns logits N×K.
    """
    if name not in CLASSIFIERS:
        raise InputError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name](**kw)
