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


class _WideBlock(nn.Module):
    """Pre-activation residual block: BN → SiLU → 3×3 conv (stride) → BN → SiLU → 3×3 conv, plus
    the input (1×1 conv shortcut, from the activated input, when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in, momentum=0.01), nn.BatchNorm2d(c_out, momentum=0.01)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.SiLU()
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x):
        a = self.act(self.bn1(x))
        h = self.conv2(self.act(self.bn2(self.conv1(a))))
        return h + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    """WRN-d-k (Zagoruyko & Komodakis 2016) as used for adversarial training by Rebuffi et al.
    2021 and Wang et al. 2023: SiLU activations, BatchNorm (momentum 0.01), three groups of
    (d − 4)/6 pre-activation blocks of widths 16k, 32k, 64k (strides 1, 2, 2). WRN-28-10 (36M
    parameters) and WRN-70-16 (267M) are the papers' CIFAR-10 networks; WRN-16-4 (2.7M) fits a CPU.
    Inputs are pixel-space [0, 1]; normalization ((x − 0.5)/0.5) is the first layer.

    ``train()``/``eval()`` change the function (BatchNorm): attacks during training run in eval
    mode (as the TRADES reference does), evaluation attacks the eval-mode network.
    """

    arch = "wrn"

    def __init__(self, depth: int = 28, width: int = 10, in_channels: int = 3, num_classes: int = 10,
                 resolution: int = 32):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise InputError(f"WideResNet: expected depth = 6n + 4 >= 10 (16, 28, 70, …), got {depth}")
        if width < 1 or num_classes < 2 or in_channels not in (1, 3):
            raise InputError(f"WideResNet: expected width >= 1, num_classes >= 2, in_channels 1 or 3, "
                             f"got {width}, {num_classes}, {in_channels}")
        if resolution < 4 or resolution % 4:
            raise InputError(f"WideResNet: expected a resolution divisible by 4, got {resolution}")
        self.config = dict(depth=depth, width=width, in_channels=in_channels, num_classes=num_classes,
                           resolution=resolution)
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        layers = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for g, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                layers.append(_WideBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1], stride if i == 0 else 1))
        self.body = nn.Sequential(*layers, nn.BatchNorm2d(widths[3], momentum=0.01), nn.SiLU())
        self.head = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        c, r = self.config["in_channels"], self.config["resolution"]
        if x.ndim != 4 or x.shape[1] != c or x.shape[-2:] != (r, r):
            raise InputError(f"WideResNet: expected N×{c}×{r}×{r} images, got shape {tuple(x.shape)}")
        return self.body((x - 0.5) / 0.5).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def parse_arch(name: str) -> tuple[str, dict]:
    """``"small-cnn"`` or ``"wrn-D-K"`` → (arch, constructor kwargs)."""
    if name == "small-cnn":
        return "small-cnn", {}
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "wrn" and parts[1].isdigit() and parts[2].isdigit():
        return "wrn", {"depth": int(parts[1]), "width": int(parts[2])}
    raise InputError(f"arch: expected 'small-cnn' or 'wrn-DEPTH-WIDTH' (e.g. wrn-28-10), got {name!r}")


#: classifier names → constructors; ``build_classifier(name, **net.config)`` rebuilds a net
CLASSIFIERS: dict[str, type[nn.Module]] = {
    "small-cnn": SmallCNN,
    "wrn": WideResNet,
}


def build_classifier(name: str, **kw) -> nn.Module:
    """Build a classifier by name (see :data:`CLASSIFIERS`) with its constructor kwargs.

    Every classifier takes pixel-space N×C×H×W in [0, 1] and returns logits N×K.
    """
    if name not in CLASSIFIERS:
        raise InputError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name](**kw)
