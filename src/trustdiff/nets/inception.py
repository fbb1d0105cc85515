"""Inception-v3 as used by standard FID, written without torchvision.

Standard FID (Heusel et al. 2017) takes its features from the TensorFlow Inception graph
"2015-12-05". Its PyTorch port, the weights file ``pt_inception-2015-12-05-6726825d.pth``
(pytorch-fid; torch-fidelity republishes the same file as
``weights-inception-2015-12-05-6726825d.pth``), fits torchvision's ``Inception3`` layout with a
1008-way head, no auxiliary classifier, and three changes that make it follow the TF graph:

* every 3×3 average pool in the A, C and E blocks ignores the zero padding
  (``count_include_pad=False``), as TensorFlow's ``avg_pool`` does;
* the pool branch of the *last* E block (``Mixed_7c``) is a 3×3 **max** pool;
* batch-norm ε is 0.001, as in TensorFlow.

:class:`FIDInceptionV3` is this network; its parameter and buffer names are torchvision's
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch_pool.bn.running_var``, …, ``fc.weight``), so
the weights file loads with ``strict=True``. Random init has 23,850,960 parameters.

Verified with random weights (``bench/verify_inception.py``; results in
``bench/results/verify_inception.json``): a seeded random state dict built by pytorch-fid's own
code (commit b9c18118d082cbd263c1b8963fc4221dc1cbb659, torchvision 0.29.1, torch 2.14.1; this
side torch 2.13.0, CPU; BN running statistics random and non-trivial) loads strictly into this
network and
``FIDInceptionV3`` reproduces pytorch-fid's ``InceptionV3`` pool-3 features bit for bit (max
difference 0, float32 and float64, every stage from Conv2d_1a_3x3 to the final pool);
``InceptionFeatureNet(preprocess="pytorch-fid")`` reproduces pytorch-fid's whole pipeline (resize
and scaling) bit for bit in float32 at 299×299, 32×32, 64×64, 28×28 grey, 48×80 and 512×512;
``preprocess="tf"`` reproduces torch-fidelity 0.4.0's "inception-v3-compat" pipeline (TF 1.x
resize, (v − 128)/128) bit for bit in float32. The two preprocessings differ from each other by
design (4% of the feature scale at 299×299, up to 15% with resizing, random weights). Commands::

    SCRATCH/bin/python bench/verify_inception.py reference --pytorch-fid CHECKOUT --out DIR
    .venv/bin/python bench/verify_inception.py compare --ref DIR

Not verified in this repository: the real weights file is not available here, so neither the
strict load of that exact file nor agreement with pytorch-fid or TF-FID *with those weights* has
been checked, nor agreement with TensorFlow's own kernels (the references above are PyTorch
ports); the names and shapes follow the pytorch-fid and torchvision sources, which load that
file strictly.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

#: side of the square input the network was trained at
INPUT_SIZE = 299
#: dimension of the pool-3 features (the output of the final average pool)
FEATURE_DIM = 2048
#: classes of the TF graph's head (1000 ImageNet classes + 8 unused)
NUM_CLASSES = 1008
#: the published file names (same file; by torch.hub's convention the suffix is the start of its SHA-256)
WEIGHTS_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_SHA256_PREFIX = "6726825d"


class ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm (ε = 0.001) → ReLU; keys ``conv.weight``, ``bn.*``.

    ``forward``: N×C_in×H×W → N×C_out×H'×W' (H', W' as for ``nn.Conv2d`` with these arguments).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def pool3x3(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The 3×3, stride-1, 'same' pool of a block's pool branch: N×C×H×W → N×C×H×W.

    ``kind="avg"`` averages over the in-image pixels only (TF semantics, not PyTorch's default
    of counting the zero padding); ``kind="max"`` is the max pool of the last E block.
    """
    if kind == "avg":
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return F.max_pool2d(x, 3, stride=1, padding=1)


class MixedA(nn.Module):
    """Block A (Mixed_5b/c/d), 35×35 grid: N×C_in×35×35 → N×(224 + pool_ch)×35×35."""

    def __init__(self, c_in: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(pool3x3(x, "avg"))
        return torch.cat([self.branch1x1(x), b5, b3, bp], 1)


class MixedB(nn.Module):
    """Grid reduction (Mixed_6a): N×C_in×35×35 → N×(480 + C_in)×17×17."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class MixedC(nn.Module):
    """Block C (Mixed_6b–e), factorised 7×7 convs: N×768×17×17 → N×768×17×17."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        bp = self.branch_pool(pool3x3(x, "avg"))
        return torch.cat([self.branch1x1(x), b7, d, bp], 1)


class MixedD(nn.Module):
    """Grid reduction (Mixed_7a): N×768×17×17 → N×1280×8×8."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):
    """Block E (Mixed_7b, Mixed_7c), expanded filter bank: N×C_in×8×8 → N×2048×8×8.

    ``pool`` is the pool branch's kind: ``"avg"`` in Mixed_7b, ``"max"`` in Mixed_7c (the TF graph).
    """

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"MixedE: pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(s), self.branch3x3_2b(s),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pool3x3(x, self.pool)),
        ], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (see the module docstring), randomly initialised until weights are loaded.

    ``forward(x)``: x N×3×H×W, already preprocessed as the TF graph expects (RGB scaled to about
    [-1, 1]; 299×299 for the standard features, though any H, W ≥ 75 runs) → pool-3 features
    N×2048 (float, ≥ 0: the average of ReLU outputs). :meth:`logits` applies the 1008-way head.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = MixedB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = MixedD(768)
        self.Mixed_7b = MixedE(1280, pool="avg")
        self.Mixed_7c = MixedE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # in the weights file; not used for features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # N×64×147×147
        x = F.max_pool2d(x, 3, stride=2)                                  # N×64×73×73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                     # N×192×71×71
        x = F.max_pool2d(x, 3, stride=2)                                  # N×192×35×35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d,      # → N×288×35×35
                      self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,      # → N×768×17×17
                      self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):     # → N×2048×8×8
            x = block(x)
        return x.mean((2, 3))                                             # N×2048

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pool-3 features N×2048 → class logits N×1008 (the TF graph's head)."""
        return self.fc(features)


def resize_bilinear_tf1(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x's ``resize_bilinear`` (``align_corners=False``, no half-pixel
    centres, no antialiasing), which the "2015-12-05" graph applies to its input.

    Output pixel i samples source position ``i · (in / out)`` (float32), interpolating between
    ``floor`` and ``min(floor + 1, in − 1)``. This differs from ``F.interpolate(mode="bilinear",
    align_corners=False)``, which samples ``(i + 0.5) · (in / out) − 0.5``.

    Args:
        x: N×C×H×W float tensor (any range). size: output side S.

    Returns:
        N×C×S×S, same dtype and device.
    """

    def axis(n_in: int):
        src = torch.arange(size, device=x.device, dtype=torch.float32) * (n_in / size)
        lo = src.floor().long().clamp_max(n_in - 1)
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    ylo, yhi, wy = axis(x.shape[-2])
    xlo, xhi, wx = axis(x.shape[-1])
    rows = [x.index_select(-2, ylo), x.index_select(-2, yhi)]
    top, bottom = (r.index_select(-1, xlo) + (r.index_select(-1, xhi) - r.index_select(-1, xlo)) * wx
                   for r in rows)
    return top + (bottom - top) * wy[:, None]


def _short(keys, n: int = 3) -> str:
    keys = sorted(keys)
    more = f", … +{len(keys) - n} more" if len(keys) > n else ""
    return "[" + ", ".join(repr(k) for k in keys[:n]) + more + "]"


def load_inception_state(net: FIDInceptionV3, state: Mapping[str, torch.Tensor], *, source) -> None:
    """Load ``state`` into ``net`` with ``strict=True``, any mismatch as one :class:`CheckpointError`
    line naming ``source`` (the file). ``*.num_batches_tracked`` may be absent (files exported
    without them load in torch too; they are unused in eval mode); every other key must be there,
    of the right shape and finite, and nothing else may be."""
    own = net.state_dict()
    optional = {k for k in own if k.endswith(".num_batches_tracked")}
    missing = own.keys() - state.keys() - optional
    unexpected = state.keys() - own.keys()
    shapes = sorted(k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing or unexpected:
            parts.append(f"missing keys {_short(missing)}, unexpected {_short(unexpected)}")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {k!r}: file {tuple(state[k].shape)} "
                         f"vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"inception weights {source}: not the pt_inception-2015-12-05 network: "
                              + "; ".join(parts))
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"inception weights {source}: non-finite values in {_short(bad)}")
    full = dict(state)
    for k in optional - full.keys():
        full[k] = torch.zeros((), dtype=torch.long)
    try:
        net.load_state_dict(full, strict=True)
    except RuntimeError as e:  # anything the checks above did not foresee (e.g. a non-castable dtype)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"inception weights {source} does not load: {first}") from None
