"""Image distortions: for robustness training of the codec (differentiable) and for the
distortion grid of the evaluation.

Every function takes pixel-space images x (float N×C×H×W in [0, 1]) and returns the same shape,
dtype and device, with values in [0, 1] (clamped where an operation could leave the range;
interpolation only forms convex combinations, so it cannot). Random ones take ``generator=`` and
draw everything from it (same generator state → same output). Gradients flow through all of them
except :func:`jpeg` with ``differentiable=False`` (real JPEG through PIL).

=================  ==========================================================================
identity           x
jpeg               quality q: real JPEG (PIL, 4:4:4 for colour) or, with ``differentiable=True``,
                   8×8 block DCT → quantisation with the IJG-scaled standard tables → inverse,
                   rounding passed straight through in the backward pass
gaussian_noise     x + std·ε, ε ~ N(0, I), clamped
gaussian_blur      separable Gaussian (σ, kernel size), reflect padding
crop               a random square of side ⌈scale·H⌉ (one position per image), resized back to
                   H×W bilinearly
resize             down to ⌈scale·H⌉ (antialiased bilinear) and back up (bilinear)
brightness         x·factor, clamped
contrast           mean + factor·(x − mean) per image (mean over C, H, W), clamped
rotate             by ``degrees`` counter-clockwise about the centre, bilinear, black fill
translate          by (dx, dy) whole pixels (right, down), the uncovered border repeating the
                   edge pixels
hflip, vflip       mirrored left–right / top–bottom
gamma              x^gamma
shift              (training) a random whole-pixel translation per image, each offset uniform
                   in −⌊max_px⌋..⌊max_px⌋, edge fill
uncrop             the inverse of ``crop`` at a given scale and offset: zoom out about the
                   offset, edge fill (a read of the detector's search)
flip               (training) a random left–right mirror per image, with probability ``p``
=================  ==========================================================================
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..images import check_images

# JPEG's standard quantisation tables (ITU-T T.81, Annex K), luminance and chrominance
_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def _check(x: torch.Tensor) -> torch.Tensor:
    return check_images(x, name="images", check_range=False)


def identity(x: torch.Tensor, generator=None) -> torch.Tensor:
    return x


def quant_table(quality: float, chroma: bool = False) -> torch.Tensor:
    """The 8×8 quantisation table at ``quality`` (1..100), scaled as libjpeg (IJG) does."""
    q = float(quality)
    if not 1 <= q <= 100:
        raise InputError(f"jpeg quality: expected 1..100, got {quality!r}")
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    base = torch.tensor(_CHROMA if chroma else _LUMA, dtype=torch.float64).view(8, 8)
    return ((base * scale + 50.0) / 100.0).floor().clamp(1, 255)


def _dct_matrix(device, dtype) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d.to(device, dtype)


def _ste_round(z: torch.Tensor) -> torch.Tensor:
    """round(z) forward, identity backward."""
    return z + (torch.round(z) - z).detach()


def _jpeg_differentiable(x: torch.Tensor, quality: float) -> torch.Tensor:
    n, c, h, w = x.shape
    v = x * 255.0
    if c == 3:  # RGB → YCbCr (JFIF)
        r, g, b = v.unbind(1)
        v = torch.stack([0.299 * r + 0.587 * g + 0.114 * b,
                         128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                         128 + 0.5 * r - 0.418688 * g - 0.081312 * b], 1)
    ph, pw = (-h) % 8, (-w) % 8
    v = F.pad(v, (0, pw, 0, ph), mode="replicate") if ph or pw else v
    H, W = v.shape[-2:]
    blocks = (v - 128.0).view(n, c, H // 8, 8, W // 8, 8).permute(0, 1, 2, 4, 3, 5)   # n,c,bh,bw,8,8
    d = _dct_matrix(x.device, x.dtype)
    coef = d @ blocks @ d.T
    tables = torch.stack([quant_table(quality, chroma=(c == 3 and i > 0)) for i in range(c)]).to(x.device, x.dtype)
    q = tables.view(1, c, 1, 1, 8, 8)
    coef = _ste_round(coef / q) * q
    v = (d.T @ coef @ d + 128.0).permute(0, 1, 2, 4, 3, 5).reshape(n, c, H, W)[..., :h, :w]
    if c == 3:
        y, cb, cr = v.unbind(1)
        v = torch.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                         y + 1.772 * (cb - 128)], 1)
    return (v / 255.0).clamp(0, 1)


def _jpeg_pil(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    from ..images import to_uint8

    out = []
    for a in to_uint8(x):
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(round(quality)), subsampling=0)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(im.mode))
        out.append(dec[..., None] if dec.ndim == 2 else dec)
    y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.dtype).div(255.0)
    return y.to(x.device)


def jpeg(x: torch.Tensor, quality: float = 75, generator=None, *, differentiable: bool = False) -> torch.Tensor:
    """JPEG at ``quality``: real (PIL; the input is rounded to uint8 first) or the differentiable
    DCT approximation (no chroma subsampling, quantisation rounding passed straight through)."""
    _check(x)
    if x.shape[1] not in (1, 3):
        raise InputError(f"jpeg: expected 1 or 3 channels, got {x.shape[1]}")
    quant_table(quality)  # validates the quality
    return _jpeg_differentiable(x, quality) if differentiable else _jpeg_pil(x, quality)


def gaussian_noise(x: torch.Tensor, std: float = 0.05, generator=None) -> torch.Tensor:
    """x + std·ε, ε ~ N(0, I) from ``generator``, clamped to [0, 1]."""
    _check(x)
    if not std >= 0:
        raise InputError(f"gaussian_noise: expected std >= 0, got {std!r}")
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + float(std) * eps).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float = 1.0, generator=None, *, kernel: int = 5) -> torch.Tensor:
    """Separable Gaussian blur (σ in pixels, odd ``kernel`` size), reflect padding."""
    _check(x)
    if not sigma > 0 or kernel < 1 or kernel % 2 == 0:
        raise InputError(f"gaussian_blur: expected sigma > 0 and an odd kernel, got sigma={sigma!r}, kernel={kernel!r}")
    c = x.shape[1]
    t = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    g = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    g = g / g.sum()
    p = kernel // 2
    mode = "reflect" if min(x.shape[-2:]) > p else "replicate"
    y = F.pad(x, (p, p, p, p), mode=mode)
    y = F.conv2d(y, g.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    y = F.conv2d(y, g.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)
    return y.clamp(0, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor, padding_mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False).clamp(0, 1)


def crop(x: torch.Tensor, scale: float = 0.75, generator=None) -> torch.Tensor:
    """A random square of ``scale`` times the side (a uniform position per image, from
    ``generator``), resized back to H×W bilinearly."""
    _check(x)
    if not 0 < scale <= 1:
        raise InputError(f"crop: expected scale in (0, 1], got {scale!r}")
    n = x.shape[0]
    shift = (torch.rand((n, 2), generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * (1 - float(scale))
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = float(scale)
    theta[:, :, 2] = shift
    return _affine(x, theta, "border")


def uncrop(x: torch.Tensor, scale: float = 0.9, tx: float = 0.0, ty: float = 0.0, generator=None) -> torch.Tensor:
    """The inverse of :func:`crop` at ``scale`` with the window's centre at (tx, ty) (in [-1, 1]
    image coordinates, as crop draws them): the image shrunk back about that centre, the border
    it uncovers repeating the edge. ``uncrop(crop(x))`` at crop's own offset is x up to the two
    bilinear resamplings and the lost border."""
    _check(x)
    if not 0 < scale <= 1:
        raise InputError(f"uncrop: expected scale in (0, 1], got {scale!r}")
    n = x.shape[0]
    s = float(scale)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / s
    theta[:, 0, 2], theta[:, 1, 2] = -float(tx) / s, -float(ty) / s
    return _affine(x, theta, "border")


def resize(x: torch.Tensor, scale: float = 0.5, generator=None) -> torch.Tensor:
    """Down to ``scale`` times the size (antialiased bilinear), then back up (bilinear)."""
    _check(x)
    if not 0 < scale <= 1:
        raise InputError(f"resize: expected scale in (0, 1], got {scale!r}")
    h, w = x.shape[-2:]
    small = (max(1, math.ceil(h * scale)), max(1, math.ceil(w * scale)))
    y = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def brightness(x: torch.Tensor, factor: float = 1.5, generator=None) -> torch.Tensor:
    """x·factor, clamped to [0, 1]."""
    _check(x)
    if not factor >= 0:
        raise InputError(f"brightness: expected factor >= 0, got {factor!r}")
    return (x * float(factor)).clamp(0, 1)


def contrast(x: torch.Tensor, factor: float = 1.5, generator=None) -> torch.Tensor:
    """mean + factor·(x − mean), the mean per image over C, H, W; clamped to [0, 1]."""
    _check(x)
    if not factor >= 0:
        raise InputError(f"contrast: expected factor >= 0, got {factor!r}")
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (m + float(factor) * (x - m)).clamp(0, 1)


def rotate(x: torch.Tensor, degrees: float = 10.0, generator=None) -> torch.Tensor:
    """Rotation by ``degrees`` about the centre, bilinear, black (0) outside the source."""
    _check(x)
    a = math.radians(float(degrees))
    n = x.shape[0]
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         device=x.device, dtype=x.dtype).expand(n, 2, 3)
    return _affine(x, theta, "zeros")


def translate(x: torch.Tensor, dx: int = 1, dy: int = 0, generator=None) -> torch.Tensor:
    """Moved right by ``dx`` and down by ``dy`` whole pixels (negative: left / up); the border
    the move uncovers repeats the edge pixels. Exact (no interpolation)."""
    _check(x)
    dx, dy = _whole("translate dx", dx), _whole("translate dy", dy)
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        raise InputError(f"translate: expected |dx| < {w} and |dy| < {h}, got dx={dx}, dy={dy}")
    p = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return p[..., top: top + h, left: left + w] if p.shape[-2:] != (h, w) else p


def _whole(name: str, v) -> int:
    if isinstance(v, bool) or float(v) != int(v):
        raise InputError(f"{name}: expected a whole number of pixels, got {v!r}")
    return int(v)


def hflip(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Mirrored left–right."""
    return _check(x).flip(-1)


def vflip(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Mirrored top–bottom."""
    return _check(x).flip(-2)


def gamma(x: torch.Tensor, gamma: float = 1.5, generator=None) -> torch.Tensor:
    """x^gamma (gamma > 0); 0 and 1 stay where they are."""
    _check(x)
    if not gamma > 0:
        raise InputError(f"gamma: expected gamma > 0, got {gamma!r}")
    return x.clamp(0, 1).pow(float(gamma))


def shift(x: torch.Tensor, max_px: float = 2, generator=None) -> torch.Tensor:
    """A random whole-pixel translation per image, (dx, dy) each uniform in −⌊max_px⌋..⌊max_px⌋
    (from ``generator``), edge fill: :func:`translate` for all images at once (one bilinear
    resampling at whole-pixel offsets, equal to it up to float rounding)."""
    _check(x)
    m = int(math.floor(float(max_px)))
    if m < 0:
        raise InputError(f"shift: expected max_px >= 0, got {max_px!r}")
    if m == 0:
        return x
    n, _, h, w = x.shape
    d = torch.randint(-m, m + 1, (n, 2), generator=generator, device=x.device).to(x.dtype)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * d[:, 0] / w               # output pixel j samples input j − dx
    theta[:, 1, 2] = -2.0 * d[:, 1] / h
    return _affine(x, theta, "border")


def flip(x: torch.Tensor, p: float = 0.5, generator=None) -> torch.Tensor:
    """Each image mirrored left–right with probability ``p`` (from ``generator``)."""
    _check(x)
    if not 0 <= p <= 1:
        raise InputError(f"flip: expected p in [0, 1], got {p!r}")
    m = torch.rand(x.shape[0], generator=generator, device=x.device) < float(p)
    return torch.where(m.view(-1, 1, 1, 1), x.flip(-1), x)


DISTORTIONS = {
    "identity": identity, "jpeg": jpeg, "gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur,
    "crop": crop, "resize": resize, "brightness": brightness, "contrast": contrast, "rotate": rotate,
    "translate": translate, "uncrop": uncrop, "hflip": hflip, "vflip": vflip, "gamma": gamma, "shift": shift, "flip": flip,
}

#: the evaluation grid: (label, distortion, parameters)
GRID: tuple[tuple[str, str, dict], ...] = (
    ("none", "identity", {}),
    ("jpeg-90", "jpeg", {"quality": 90}), ("jpeg-70", "jpeg", {"quality": 70}),
    ("jpeg-50", "jpeg", {"quality": 50}), ("jpeg-30", "jpeg", {"quality": 30}),
    ("crop-0.9", "crop", {"scale": 0.9}), ("crop-0.75", "crop", {"scale": 0.75}), ("crop-0.5", "crop", {"scale": 0.5}),
    ("resize-0.5", "resize", {"scale": 0.5}),
    ("blur-1.0", "gaussian_blur", {"sigma": 1.0}),
    ("noise-0.02", "gaussian_noise", {"std": 0.02}), ("noise-0.05", "gaussian_noise", {"std": 0.05}),
    ("noise-0.1", "gaussian_noise", {"std": 0.1}),
    ("brightness-1.5", "brightness", {"factor": 1.5}), ("contrast-1.5", "contrast", {"factor": 1.5}),
    ("rotate-10", "rotate", {"degrees": 10.0}),
)


def apply(name: str, x: torch.Tensor, generator=None, **params) -> torch.Tensor:
    """Apply the distortion ``name`` (a key of :data:`DISTORTIONS`)."""
    if name not in DISTORTIONS:
        raise InputError(f"distortion: expected one of {', '.join(DISTORTIONS)}, got {name!r}")
    return DISTORTIONS[name](x, generator=generator, **params)


#: kinds for training and the strength range each draws from (uniform)
TRAIN_RANGES = {
    "jpeg": ("quality", 50.0, 95.0),
    "noise": ("std", 0.0, 0.05),
    "blur": ("sigma", 0.3, 1.2),
    "crop": ("scale", 0.8, 1.0),
    "resize": ("scale", 0.5, 1.0),
    "brightness": ("factor", 0.7, 1.3),
    "contrast": ("factor", 0.7, 1.3),
    "shift": ("max_px", 0.0, 2.0),       # ⌊max_px⌋: 0 or 1 (2 only at the end point)
    "flip": ("p", 1.0, 1.0),
    "gamma": ("gamma", 0.7, 1.4),
}
_TRAIN_FN = {"jpeg": "jpeg", "noise": "gaussian_noise", "blur": "gaussian_blur", "crop": "crop",
             "resize": "resize", "brightness": "brightness", "contrast": "contrast", "shift": "shift",
             "flip": "flip", "gamma": "gamma"}


#: the ``robust`` preset of codec training distortions: whole-pixel moves (mostly ±1) and crops
#: besides JPEG, noise and blur. Flips, larger moves and the 0.9 crop are left to the detector's
#: search (:mod:`.search`), which undoes them; a composite draw of a move with every photometric
#: distortion trained to Bit-Acc 0.63 on its batches in 1,000 steps, against 0.95 for one kind per batch
ROBUST = ("shift", "crop", "jpeg", "noise", "blur")


def check_train_kinds(kinds) -> tuple[str, ...]:
    """Training distortion kinds; the name ``robust`` stands for :data:`ROBUST`."""
    kinds = tuple(k for name in kinds for k in (ROBUST if name == "robust" else (name,)))
    bad = [k for k in kinds if k not in TRAIN_RANGES]
    if bad:
        raise InputError(f"training distortions: expected names among robust, {', '.join(TRAIN_RANGES)}, got {bad[0]!r}")
    return tuple(dict.fromkeys(kinds))


def random_distortion(x: torch.Tensor, kinds, generator=None) -> torch.Tensor:
    """One training distortion for the whole batch: a kind drawn uniformly from ``kinds`` plus
    "none", at a strength drawn uniformly from :data:`TRAIN_RANGES`; differentiable."""
    kinds = check_train_kinds(kinds)
    if not kinds:
        return x
    u = torch.rand(2, generator=generator, device=x.device).tolist()
    i = min(int(u[0] * (len(kinds) + 1)), len(kinds))
    if i == len(kinds):
        return x
    kind = kinds[i]
    param, lo, hi = TRAIN_RANGES[kind]
    value = lo + (hi - lo) * u[1]
    if kind == "jpeg":
        return jpeg(x, value, differentiable=True)
    return apply(_TRAIN_FN[kind], x, generator=generator, **{param: value})
