"""Data augmentations for adversarial training, as small seeded batched tensor functions
(no torchvision): the six Wang et al. (2023, Table 5) put on top of generated data.

    x_aug, target = augment(name, x, y, num_classes, generator, flip=True)

x: float N×C×H×W in [0, 1]; y: int64 [N]; ``target``: float N×K class probabilities (one-hot
except under CutMix, which mixes them). Every random choice is drawn from ``generator``, per image,
so the same generator state gives the same batch. Sizes given for 32×32 in the papers are scaled
to the image side H (×H/32, rounded), and stated where they are. ``flip=False`` drops the
horizontal flip from every pipeline: common's (which all but IDBH build on) and IDBH's own. A
mirrored digit or letter is not an image of its class, so the digits preset turns it off.

  none         x
  common       random crop with zero padding 4 (×H/32) and a horizontal flip with p = ½: the
               standard CIFAR-10 pipeline (He et al. 2016; Wang et al.'s baseline);
  cutout       common, then one zeroed square of side 16 (×H/32) centred uniformly on the image,
               clipped at the border (DeVries & Taylor 2017);
  cutmix       common, then with p = ½ (Yun et al. 2019's CIFAR setting) a box from another image
               of the batch pasted in: λ ~ Beta(1, 1), box sides √(1 − λ)·(H, W) around a uniform
               centre, clipped; the labels mixed by the pasted area;
  autoaugment  common, then one of the 25 sub-policies of AutoAugment's CIFAR-10 policy (Cubuk et
               al. 2019; magnitudes on its 10-level scale) per image;
  randaugment  common, then N = 2 operations drawn uniformly from 14, at magnitude 9 of 31
               (Cubuk et al. 2020; torchvision's defaults), random sign where an op has one;
  idbh         IDBH's CIFAR-10 "weak" version (Li & Spratling 2023, *Data Augmentation Alone Can
               Improve Adversarial Training*): flip, crop-shift of strength 0–10 (×H/32), one
               colour-biased op, random erasing with p = ½ (area 2–33%, aspect 0.3–3.3).

The image operations follow PIL's definitions (as AutoAugment and RandAugment use them) on [0, 1]
pixels: geometric ones resample bilinearly with zero fill (PIL: nearest), colour ones blend with
a degenerate image (black, grey mean, greyscale, smoothed) and clamp.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..images import check_images

AUGMENTATIONS = ("none", "common", "cutout", "cutmix", "autoaugment", "randaugment", "idbh")


# --- per-image random draws -------------------------------------------------------------------

def _rand(n, g, x):
    return torch.rand(n, generator=g, device=g.device if g is not None else x.device).to(x.device)


def _randint(lo, hi, n, g, x):
    """Integers uniform in [lo, hi] (inclusive), [n]."""
    return (lo + (_rand(n, g, x) * (hi - lo + 1)).floor().clamp(max=hi - lo)).long()


def _sign(n, g, x):
    return torch.where(_rand(n, g, x) < 0.5, -1.0, 1.0).to(x.dtype)


def _scaled(px32: float, side: int) -> int:
    """A size given for 32×32 images at this side."""
    return int(round(px32 * side / 32))


# --- image operations (per-image magnitudes, tensors [N]) ------------------------------------------

def _affine(x, theta):
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def _eye(x):
    return torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(x.shape[0], 1, 1)


def shear_x(x, m):
    """PIL's affine (1, m, 0, 0, 1, 0) about the centre: output pixel (u, v) reads (u + m·v, v)."""
    t = _eye(x)
    t[:, 0, 1] = m * x.shape[-2] / x.shape[-1]
    return _affine(x, t)


def shear_y(x, m):
    t = _eye(x)
    t[:, 1, 0] = m * x.shape[-1] / x.shape[-2]
    return _affine(x, t)


def translate_x(x, px):
    """Content moved left by ``px`` pixels (PIL's affine (1, 0, px, 0, 1, 0))."""
    t = _eye(x)
    t[:, 0, 2] = 2 * px / x.shape[-1]
    return _affine(x, t)


def translate_y(x, px):
    t = _eye(x)
    t[:, 1, 2] = 2 * px / x.shape[-2]
    return _affine(x, t)


def rotate(x, degrees):
    """Counter-clockwise by ``degrees`` about the centre (PIL's rotate)."""
    a = degrees * math.pi / 180
    t = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    h, w = x.shape[-2:]
    t[:, 0, 0], t[:, 0, 1] = torch.cos(a), torch.sin(a) * h / w
    t[:, 1, 0], t[:, 1, 1] = -torch.sin(a) * w / h, torch.cos(a)
    return _affine(x, t)


def _blend(x, degenerate, factor):
    """degenerate + factor·(x − degenerate), clamped: PIL ImageEnhance."""
    f = factor.reshape(-1, 1, 1, 1).to(x.dtype)
    return (degenerate + f * (x - degenerate)).clamp(0, 1)


def _grey(x):
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def color(x, f):
    """Saturation: a blend with the greyscale image (a no-op on one channel)."""
    return _blend(x, _grey(x), f)


def contrast(x, f):
    """A blend with the mean grey level of each image."""
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), f)


def sharpness(x, f):
    """A blend with PIL's SMOOTH-filtered image (kernel [1 1 1; 1 5 1; 1 1 1]/13), the border kept."""
    c = x.shape[1]
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5
    smooth = F.conv2d(x, (k / 13).expand(c, 1, 3, 3), padding=1, groups=c)
    smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]
    smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
    return _blend(x, smooth, f)


def posterize(x, bits):
    """Keep the top ``bits`` of each 8-bit value."""
    q = (x * 255).round().long()
    drop = (8 - bits.long()).reshape(-1, 1, 1, 1)
    return ((q >> drop) << drop).to(x.dtype) / 255


def solarize(x, threshold):
    """Invert the values at or above ``threshold`` (in [0, 1])."""
    return torch.where(x >= threshold.reshape(-1, 1, 1, 1), 1 - x, x)


def invert(x, _=None):
    return 1 - x


def auto_contrast(x, _=None):
    """Each channel of each image stretched from its min..max to 0..1 (constant channels kept)."""
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def equalize(x, _=None):
    """PIL's histogram equalisation per channel of each image, on 256 levels."""
    n, c, h, w = x.shape
    q = (x * 255).round().long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float))
    # PIL: step = (pixels − count of the last non-empty level) // 255; lut = (cumsum + step // 2) // step
    last = hist.gather(1, (255 - (hist.flip(1) > 0).float().argmax(1))[:, None])[:, 0]
    step = ((h * w - last) // 255)[:, None]
    cum = torch.cumsum(hist, 1) - hist                          # pixels below each level
    lut = ((cum + step // 2) // step.clamp_min(1)).clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, q), q.float())
    return (out / 255).reshape(n, c, h, w).to(x.dtype)


def identity(x, _=None):
    return x


# --- AutoAugment / RandAugment magnitudes ---------------------------------------------------------

def _magnitude(op: str, level, bins: int, side: int):
    """The magnitude of ``op`` at ``level`` (tensor [N]) of a ``bins``-level scale (AutoAugment: 10,
    RandAugment: 31), as torchvision's tables: shear 0–0.3, translate 0–150/331 of the side,
    rotate 0–30°, enhance factors 1 ± 0–0.9, posterize 8→4 bits, solarize threshold 1→0."""
    t = level.float() / (bins - 1)
    if op in ("shear_x", "shear_y"):
        return 0.3 * t
    if op in ("translate_x", "translate_y"):
        return 150 / 331 * side * t
    if op == "rotate":
        return 30 * t
    if op in ("brightness", "color", "contrast", "sharpness"):
        return 0.9 * t
    if op == "posterize":
        return 8 - (level.float() / ((bins - 1) / 4)).round()
    if op == "solarize":
        return 1 - t
    return t


SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast", "sharpness")
ENHANCE = ("brightness", "color", "contrast", "sharpness")
OPS = {"identity": identity, "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
       "translate_y": translate_y, "rotate": rotate, "brightness": brightness, "color": color, "contrast": contrast,
       "sharpness": sharpness, "posterize": posterize, "solarize": solarize, "auto_contrast": auto_contrast,
       "equalize": equalize, "invert": invert}


def apply_op(x, op: str, level, bins: int, g):
    """``op`` at ``level`` [N] on every image, with a random sign per image where the op has one."""
    m = _magnitude(op, level, bins, x.shape[-1])
    if op in SIGNED:
        m = m * _sign(len(x), g, x)
    if op in ENHANCE:
        m = 1 + m
    return OPS[op](x, m.to(x.dtype))


def _per_image(x, choice, n_choices, fn):
    """fn(x[sel], k) for each choice k on the images that drew it; the rest unchanged."""
    out = x.clone()
    for k in range(n_choices):
        sel = choice == k
        if sel.any():
            out[sel] = fn(x[sel], k, sel)
    return out


#: AutoAugment's CIFAR-10 policy (Cubuk et al. 2019, Appendix, Table 8): 25 sub-policies of two
#: (operation, probability, magnitude level of 0–9) each
CIFAR10_POLICY = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)), (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)), (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("auto_contrast", 0.5, 8), ("equalize", 0.9, 2)), (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)), (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)), (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)), (("equalize", 0.3, 7), ("auto_contrast", 0.4, 8)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)), (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)), (("equalize", 0.2, 0), ("auto_contrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)), (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("auto_contrast", 0.8, 4), ("solarize", 0.2, 8)), (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("auto_contrast", 0.9, 3)), (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("auto_contrast", 0.9, 2), ("solarize", 0.8, 3)), (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate_y", 0.7, 9), ("auto_contrast", 0.9, 1)),
)
RANDAUGMENT_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                   "contrast", "sharpness", "posterize", "solarize", "auto_contrast", "equalize")


def auto_augment(x, g):
    pick = _randint(0, len(CIFAR10_POLICY) - 1, len(x), g, x)
    for slot in range(2):
        roll = _rand(len(x), g, x)

        def sub(xs, k, sel, slot=slot, roll=roll):
            op, p, level = CIFAR10_POLICY[k][slot]
            apply = roll[sel] < p
            out = xs.clone()
            if apply.any():
                lv = torch.full((int(apply.sum()),), float(level), device=x.device)
                out[apply] = apply_op(xs[apply], op, lv, 10, g)
            return out

        x = _per_image(x, pick, len(CIFAR10_POLICY), sub)
    return x


def rand_augment(x, g, n_ops: int = 2, magnitude: int = 9, bins: int = 31):
    for _ in range(n_ops):
        pick = _randint(0, len(RANDAUGMENT_OPS) - 1, len(x), g, x)
        x = _per_image(x, pick, len(RANDAUGMENT_OPS),
                       lambda xs, k, sel: apply_op(xs, RANDAUGMENT_OPS[k], torch.full((len(xs),), float(magnitude),
                                                                                       device=x.device), bins, g))
    return x


# --- crops, flips, erasing, mixing -----------------------------------------------------------------

def hflip(x, g, p: float = 0.5):
    flip = _rand(len(x), g, x) < p
    return torch.where(flip.reshape(-1, 1, 1, 1), x.flip(-1), x)


def pad_crop(x, g, pad: int):
    """Zero-pad by ``pad`` and crop back to H×W at a uniform offset per image."""
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = _randint(0, 2 * pad, n, g, x), _randint(0, 2 * pad, n, g, x)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def _box_mask(x, cy, cx, bh, bw):
    """Bool N×1×H×W: the boxes of sides (bh, bw) centred at (cy, cx), clipped to the image."""
    h, w = x.shape[-2:]
    ys, xs = torch.arange(h, device=x.device)[None, :], torch.arange(w, device=x.device)[None, :]
    iny = (ys >= (cy - bh // 2)[:, None]) & (ys < (cy - bh // 2 + bh)[:, None])
    inx = (xs >= (cx - bw // 2)[:, None]) & (xs < (cx - bw // 2 + bw)[:, None])
    return (iny[:, :, None] & inx[:, None, :])[:, None]


def cutout(x, g, side: int):
    n, _, h, w = x.shape
    m = _box_mask(x, _randint(0, h - 1, n, g, x), _randint(0, w - 1, n, g, x), torch.full((n,), side, device=x.device),
                  torch.full((n,), side, device=x.device))
    return x.masked_fill(m, 0.0)


def crop_shift(x, g, low: int, high: int):
    """IDBH's crop-shift: strength s uniform in [low, high] per image split randomly into a
    horizontal s_x and vertical s − s_x; crop away s_x columns and s_y rows at a random offset,
    zero-pad them back, and shift the content by a random amount within the pad."""
    n, c, h, w = x.shape
    s = _randint(low, high, n, g, x)
    sx = (_rand(n, g, x) * (s + 1).float()).floor().long().clamp(max=s)
    sy = s - sx
    cx0 = (_rand(n, g, x) * (sx + 1).float()).floor().long().clamp(max=sx)
    cy0 = (_rand(n, g, x) * (sy + 1).float()).floor().long().clamp(max=sy)
    px = (_rand(n, g, x) * (sx + 1).float()).floor().long().clamp(max=sx)
    py = (_rand(n, g, x) * (sy + 1).float()).floor().long().clamp(max=sy)
    # output pixel (i, j) shows input (i + cy0 − py, j + cx0 − px) where that lies inside the crop
    ii, jj = torch.arange(h, device=x.device)[None, :, None], torch.arange(w, device=x.device)[None, None, :]
    src_i, src_j = ii + (cy0 - py)[:, None, None], jj + (cx0 - px)[:, None, None]
    inside = ((src_i >= cy0[:, None, None]) & (src_i < (cy0 + h - sy)[:, None, None])
              & (src_j >= cx0[:, None, None]) & (src_j < (cx0 + w - sx)[:, None, None]))
    flat = (src_i.clamp(0, h - 1) * w + src_j.clamp(0, w - 1)).reshape(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, flat).reshape(n, c, h, w)
    return out * inside[:, None].to(x.dtype)


def random_erasing(x, g, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    """Zhong et al. 2020 (torchvision's RandomErasing, value 0): with probability p a box of area
    uniform in ``scale`` × H·W and log-uniform aspect in ``ratio``, at a uniform position, zeroed;
    a box that does not fit is not drawn again (torchvision retries 10 times) but clipped."""
    n, _, h, w = x.shape
    area = h * w * (scale[0] + (scale[1] - scale[0]) * _rand(n, g, x))
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(n, g, x))
    bh = (area * aspect).sqrt().round().long().clamp(1, h)
    bw = (area / aspect).sqrt().round().long().clamp(1, w)
    top = (_rand(n, g, x) * (h - bh + 1).float()).floor().long()
    left = (_rand(n, g, x) * (w - bw + 1).float()).floor().long()
    m = _box_mask(x, top + bh // 2, left + bw // 2, bh, bw)
    on = (_rand(n, g, x) < p).reshape(-1, 1, 1, 1)
    return x.masked_fill(m & on, 0.0)


COLOR_BIASED = (  # IDBH's colour-biased space: (probability, op, magnitude range)
    (0.125, "color", (0.1, 1.9)), (0.125, "brightness", (0.5, 1.9)), (0.125, "contrast", (0.5, 1.9)),
    (0.125, "sharpness", (0.1, 1.9)), (0.125, "auto_contrast", None), (0.125, "equalize", None),
    (0.125, "shear", (0.05, 0.15)), (0.125, "rotate", (1, 11)),
)


def color_shape(x, g):
    """One op of IDBH's colour-biased space per image: enhance factors uniform in their range, shear
    uniform (random sign, random axis), rotation a whole number of degrees (random sign)."""
    pick = _randint(0, len(COLOR_BIASED) - 1, len(x), g, x)      # the eight are equally likely

    def one(xs, k, sel):
        _, op, rng = COLOR_BIASED[k]
        m = len(xs)
        if rng is None:
            return OPS[op](xs)
        if op == "rotate":
            return rotate(xs, _randint(rng[0], rng[1] - 1, m, g, x).to(xs.dtype) * _sign(m, g, x))
        v = (rng[0] + (rng[1] - rng[0]) * _rand(m, g, x)).to(xs.dtype)
        if op == "shear":
            v = v * _sign(m, g, x)
            on_x = _rand(m, g, x) < 0.5
            return torch.where(on_x.reshape(-1, 1, 1, 1), shear_x(xs, v), shear_y(xs, v))
        return OPS[op](xs, v)

    return _per_image(x, pick, len(COLOR_BIASED), one)


def cutmix(x, target, g, p: float = 0.5):
    """Yun et al. 2019: with probability p per batch image, a box of another image (a seeded
    permutation of the batch) pasted in; targets mixed by the exact pasted area."""
    n, _, h, w = x.shape
    lam = _rand(n, g, x)                                           # λ ~ Beta(1, 1) = U(0, 1)
    cut = (1 - lam).sqrt()
    bh, bw = (cut * h).long(), (cut * w).long()
    m = _box_mask(x, _randint(0, h - 1, n, g, x), _randint(0, w - 1, n, g, x), bh, bw)
    m &= (_rand(n, g, x) < p).reshape(-1, 1, 1, 1)
    perm = torch.argsort(_rand(n, g, x))
    out = torch.where(m, x[perm], x)
    frac = m.flatten(1).float().mean(1, keepdim=True)              # the pasted share of the image
    return out, (1 - frac) * target + frac * target[perm]


# --- the entry point -------------------------------------------------------------------------------

def check_augment(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise InputError(f"augment: expected one of {', '.join(AUGMENTATIONS)}, got {name!r}")
    return name


def common(x, g, flip: bool = True):
    return pad_crop(hflip(x, g) if flip else x, g, _scaled(4, x.shape[-2]))


def augment(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator=None, flip: bool = True):
    """(augmented x, target probabilities N×K) for augmentation ``name`` (the module's table);
    ``flip``: whether the pipelines' horizontal flip is applied."""
    check_augment(name)
    check_images(x, name="x")
    target = F.one_hot(y, num_classes).to(x.dtype)
    if name == "none":
        return x, target
    g, side = generator, x.shape[-2]
    if name == "idbh":
        x = crop_shift(hflip(x, g) if flip else x, g, 0, _scaled(10, side))
        return random_erasing(color_shape(x, g), g), target
    x = common(x, g, flip)
    if name == "cutout":
        x = cutout(x, g, _scaled(16, side))
    elif name == "cutmix":
        x, target = cutmix(x, target, g)
    elif name == "autoaugment":
        x = auto_augment(x, g)
    elif name == "randaugment":
        x = rand_augment(x, g)
    return x.clamp(0, 1), target
