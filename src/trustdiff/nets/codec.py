"""The watermark codec networks of Zhao et al. 2023 (*A Recipe for Watermarking Diffusion Models*),
after StegaStamp (Tancik et al. 2020): an encoder E(x, w) that hides an n-bit string w in an
image, and a decoder D(x) that reads n logits back.

Encoder (the recipe's ``StegaStampEncoder``, generalised): the bits go through a dense layer to a
C×P×P plane (P the smallest divisor of H that is ≥ 16, so 16 for 32×32 as in the recipe),
nearest-upsampled to H×W and concatenated with the image; a U-Net (``depth`` stride-2 levels of
widths w, 2w, 4w, 8w…, skip connections, the input concatenated again before the last convs) ends
in a 1×1 conv giving a residual r. The recipe's encoder returns ``sigmoid(r)`` as the whole image;
here r is applied as a *range-preserving residual*

    E(x, w) = x + (1 − x)·tanh(r)  where r ≥ 0,      x + x·tanh(r)  where r < 0,

which is exactly x when r = 0 (the last conv starts at zero, so training starts from the identity),
always lies in [0, 1], and keeps a gradient wherever a pixel can still move (a black pixel can
brighten, a white one darken). That is the one deliberate change to the recipe's networks.

Decoder (the recipe's ``StegaStampDecoder``): 3×3 convs with ReLU, ``dec_depth`` of them stride 2
(widths w, 2w, 2w, 4w, 4w, …, a stride-1 conv after each of the first two), flattened, a dense
layer of ``hidden`` units, then n logits. With the defaults at 32×32 the layer shapes are the
recipe's exactly.

Images are pixel space, float N×C×H×W in [0, 1]; bits are {0, 1} as floats or ints, N×n.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

MIN_BITS, MAX_BITS = 4, 128


def plane_side(resolution: int) -> int:
    """Side P of the encoder's bit plane: the smallest divisor of ``resolution`` that is ≥ 16
    (``resolution`` itself when it is below 16)."""
    if resolution < 16:
        return resolution
    return next(d for d in range(16, resolution + 1) if resolution % d == 0)


def codec_stride(enc_depth: int, dec_depth: int) -> int:
    """The stride a resolution must divide by: 2**max(enc_depth, dec_depth)."""
    return 2 ** max(enc_depth, dec_depth)


def check_codec_config(resolution, channels, n_bits, width, enc_depth, dec_depth, hidden) -> None:
    """Validate codec hyper-parameters; one InputError line naming the first bad one."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(n_bits) or not MIN_BITS <= n_bits <= MAX_BITS:
        raise InputError(f"codec n_bits: expected an integer in {MIN_BITS}..{MAX_BITS}, got {n_bits!r}")
    if channels not in (1, 3):
        raise InputError(f"codec channels: expected 1 or 3, got {channels!r}")
    for name, v, lo in (("width", width, 1), ("enc_depth", enc_depth, 1), ("dec_depth", dec_depth, 1), ("hidden", hidden, 1)):
        if not is_int(v) or v < lo:
            raise InputError(f"codec {name}: expected an integer >= {lo}, got {v!r}")
    s = codec_stride(enc_depth, dec_depth)
    if not is_int(resolution) or resolution < s or resolution % s:
        raise InputError(f"codec resolution: expected a multiple of the network stride {s} "
                         f"(enc_depth {enc_depth}, dec_depth {dec_depth}), got {resolution!r}")


def check_bit_offsets(offsets, n_bits: int) -> torch.Tensor:
    """The decision offsets of the n logits (bit k is 1 where logit k > offset k): n finite
    floats, or None for the recipe's 0."""
    if offsets is None:
        return torch.zeros(n_bits)
    t = torch.as_tensor(offsets, dtype=torch.float32)
    if t.shape != (n_bits,) or not torch.isfinite(t).all():
        raise InputError(f"bit_offsets: expected {n_bits} finite floats, got {list(t.shape)} values")
    return t.clone()


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1)


def _init(module: nn.Module, head: nn.Module | None = None, head_gain: float = 1.0) -> None:
    """He (Kaiming) normal initialisation for every conv and dense layer, zero biases; the
    ``head`` layer's weights are then scaled by ``head_gain``. PyTorch's default initialisation
    shrinks the signal layer by layer, and with it the codec sits at Bit-Acc 0.5 for thousands of
    steps; He initialisation keeps the bits' signal alive through both networks."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    if head is not None:
        with torch.no_grad():
            head.weight.mul_(head_gain)


def bounded_residual(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """x + (1 − x)·tanh(r) where r ≥ 0, x + x·tanh(r) where r < 0: in [0, 1] for x in [0, 1],
    exactly x at r = 0, with derivative 1 − x there (so a zero-initialised r still learns)."""
    t = torch.tanh(r)
    return x + torch.where(r >= 0, (1 - x) * t, x * t)


class StegaStampEncoder(nn.Module):
    """E(x, bits) → watermarked x, same shape, in [0, 1]. See the module docstring.

    Args:
        resolution: H = W, a multiple of 2**depth.
        channels: C, 1 or 3.
        n_bits: n, 4..128.
        width: w; level i of the U-Net has w·2**(i−1) channels (recipe: 32).
        depth: stride-2 levels of the U-Net (recipe: 4).
    """

    def __init__(self, resolution: int = 32, channels: int = 1, n_bits: int = 64, width: int = 32, depth: int = 4,
                 head_gain: float = 0.1):
        super().__init__()
        check_codec_config(resolution, channels, n_bits, width, depth, 1, 1)
        self.resolution, self.channels, self.n_bits, self.depth = resolution, channels, n_bits, depth
        self.plane = plane_side(resolution)
        self.secret_dense = nn.Linear(n_bits, channels * self.plane * self.plane)
        c0 = 2 * channels
        self.conv_in = _conv(c0, width)
        widths = [width * 2 ** i for i in range(depth)]              # level 1..depth
        self.down = nn.ModuleList(_conv(c_in, c_out, 2) for c_in, c_out in zip([width] + widths[:-1], widths))
        skips = [width] + widths[:-1]                                 # the tensor each level up merges with
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        c = widths[-1]
        for i in reversed(range(depth)):
            c_skip = skips[i]
            self.up.append(nn.Conv2d(c, c_skip, 2, 1))                # after ×2 upsampling and (0,1,0,1) padding
            extra = c0 if i == 0 else 0                                # the input is merged again at full size
            self.merge.append(_conv(c_skip * 2 + extra, c_skip))
            c = c_skip
        self.conv_out = _conv(width, width)
        self.residual = nn.Conv2d(width, channels, 1)
        _init(self, head=self.residual, head_gain=head_gain)

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        plane = F.relu(self.secret_dense(2 * bits.to(x.dtype) - 1)).view(n, self.channels, self.plane, self.plane)
        plane = F.interpolate(plane, size=(h, w), mode="nearest")
        inputs = torch.cat([plane, 2 * x - 1], dim=1)
        feats = [F.relu(self.conv_in(inputs))]
        for conv in self.down:
            feats.append(F.relu(conv(feats[-1])))
        y = feats[-1]
        for j, (up, merge) in enumerate(zip(self.up, self.merge)):
            i = self.depth - 1 - j
            y = F.relu(up(F.pad(F.interpolate(y, scale_factor=2.0, mode="nearest"), (0, 1, 0, 1))))
            parts = [feats[i], y] + ([inputs] if i == 0 else [])
            y = F.relu(merge(torch.cat(parts, dim=1)))
        r = self.residual(F.relu(self.conv_out(y)))
        return bounded_residual(x, r)


class StegaStampDecoder(nn.Module):
    """D(x) → n logits (bit k reads 1 where logit k > 0). See the module docstring.

    Args:
        resolution: H = W, a multiple of 2**depth.
        channels: C, 1 or 3.
        n_bits: n, 4..128.
        width: w (recipe: 32).
        depth: stride-2 convs (recipe: 5, so 32×32 → 1×1).
        hidden: units of the dense layer (recipe: 512).
    """

    def __init__(self, resolution: int = 32, channels: int = 1, n_bits: int = 64, width: int = 32, depth: int = 5,
                 hidden: int = 512):
        super().__init__()
        check_codec_config(resolution, channels, n_bits, width, 1, depth, hidden)
        widths = [width * m for m in (1, 2, 2, 4)] + [width * 4] * max(0, depth - 4)
        layers, c = [], channels
        for i in range(depth):
            layers += [_conv(c, widths[i], 2), nn.ReLU()]
            c = widths[i]
            if i < 2:
                layers += [_conv(c, c), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        side = resolution // 2 ** depth
        self.dense = nn.Sequential(nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Linear(hidden, n_bits))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.convs(2 * x - 1).flatten(1))


class Codec(nn.Module):
    """The encoder and decoder together, with ``config`` (JSON-able constructor kwargs), so
    ``Codec(**codec.config)`` rebuilds the architecture for a state dict."""

    arch = "stegastamp"

    def __init__(self, resolution: int = 32, channels: int = 1, n_bits: int = 64, width: int = 32,
                 enc_depth: int = 4, dec_depth: int = 5, hidden: int = 512, dec_width: int | None = None,
                 bit_offsets: list[float] | None = None):
        super().__init__()
        dec_width = width if dec_width is None else dec_width
        check_codec_config(resolution, channels, n_bits, width, enc_depth, dec_depth, hidden)
        check_codec_config(resolution, channels, n_bits, dec_width, enc_depth, dec_depth, hidden)
        self.config = dict(resolution=resolution, channels=channels, n_bits=n_bits, width=width,
                           enc_depth=enc_depth, dec_depth=dec_depth, hidden=hidden, dec_width=dec_width)
        self.encoder = StegaStampEncoder(resolution, channels, n_bits, width, enc_depth)
        self.decoder = StegaStampDecoder(resolution, channels, n_bits, dec_width, dec_depth, hidden)
        self.register_buffer("bit_offset", check_bit_offsets(bit_offsets, n_bits), persistent=False)
        if bit_offsets is not None:
            self.config["bit_offsets"] = [float(v) for v in self.bit_offset]

    @property
    def n_bits(self) -> int:
        return self.config["n_bits"]

    @property
    def resolution(self) -> int:
        return self.config["resolution"]

    @property
    def channels(self) -> int:
        return self.config["channels"]

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E(x, bits), D(E(x, bits)))."""
        xw = self.encoder(x, bits)
        return xw, self.decoder(xw)
