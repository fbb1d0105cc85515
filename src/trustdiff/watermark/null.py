"""Clean images for the null, and the null calibration of a decoder.

Two sources of clean images, none of which needs anything but the embedded digits:

* :func:`shifted_copies` — a data set plus copies translated by a few pixels (edge-replicated), to
  reach the ≥ 2,000 clean images of the training distribution that the 1,797 digits cannot give;
* :func:`synthetic_strokes` — "another distribution": 1–4 random thick strokes on black, blurred
  (digit-like statistics, no digits), for a decoder's behaviour off the training distribution.

:func:`null_calibration` decodes each clean set once and, for many random keys, reports the mean
Bit-Acc (≈ 0.5 over keys) and, per key, the :func:`~trustdiff.watermark.stats.null_check` of the
analytic thresholds — for a single key the decoder's bits need not be fair coins.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ..errors import InputError
from ..nets.codec import Codec
from .codec import decode_bits
from .search import best_of, read_all, resolve_search
from .stats import CHECK_FPRS, null_check


def shifted_copies(x: torch.Tensor, total: int, *, max_shift: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` followed by copies of its images translated by up to ``max_shift`` pixels in each
    direction (a nonzero shift, edges replicated), cycling through ``x``, until ``total`` images."""
    if total <= len(x):
        return x[:total]
    extra = total - len(x)
    idx = torch.arange(extra) % len(x)
    shifts = torch.randint(-max_shift, max_shift + 1, (extra, 2), generator=generator)
    zero = (shifts == 0).all(1)
    shifts[zero, 0] = 1                                           # never an unshifted duplicate
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    out = torch.stack([padded[i, :, p + dy: p + dy + h, p + dx: p + dx + w]
                       for i, (dy, dx) in zip(idx.tolist(), shifts.tolist())])
    return torch.cat([x, out])


def synthetic_strokes(n: int, resolution: int, channels: int = 1, *, generator: torch.Generator | None = None,
                      batch: int = 256) -> torch.Tensor:
    """``n`` images N×C×r×r in [0, 1]: 1–4 line segments of random ends and width (1.5–4 % of
    the side … 10 %) drawn as a soft distance profile on black, grey in each channel alike."""
    if n < 0 or resolution < 4 or channels not in (1, 3):
        raise InputError(f"synthetic_strokes: expected n >= 0, resolution >= 4, channels 1 or 3, got {n}, {resolution}, {channels}")
    r = resolution
    yy, xx = torch.meshgrid(torch.linspace(0, 1, r), torch.linspace(0, 1, r), indexing="ij")
    pix = torch.stack([xx, yy], -1).view(1, 1, r * r, 2)
    out = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        k = 4
        a = 0.15 + 0.7 * torch.rand(m, k, 1, 2, generator=generator)
        b = 0.15 + 0.7 * torch.rand(m, k, 1, 2, generator=generator)
        width = 0.03 + 0.07 * torch.rand(m, k, 1, generator=generator)
        active = torch.arange(k).view(1, k) < torch.randint(1, k + 1, (m, 1), generator=generator)
        ab = b - a
        t = ((pix - a) * ab).sum(-1) / ab.square().sum(-1).clamp_min(1e-8)
        d2 = (pix - (a + t.clamp(0, 1).unsqueeze(-1) * ab)).square().sum(-1)     # m, k, r*r
        ink = torch.exp(-d2 / (2 * width.square())) * active.unsqueeze(-1)
        img = ink.amax(1).view(m, 1, r, r).clamp(0, 1)
        out.append(img.expand(m, channels, r, r).contiguous())
    return torch.cat(out) if out else torch.zeros(0, channels, r, r)


def null_calibration(codec: Codec, clean_sets: dict, keys: torch.Tensor, *, fprs=CHECK_FPRS + (1e-6,),
                     level: float = 0.99, search="none") -> dict:
    """The decoder on clean images, over many keys.

    Args:
        codec: the trained codec.
        clean_sets: name → clean images N×C×H×W in [0, 1].
        keys: K×n random keys (K ≥ 20 for the recipe's check).
        fprs: nominal rates of the per-key checks.
        search: read every image through this search (:mod:`.search`): each key's count is the
            best of the K reads and its checks are those of the searched threshold (one-sided).

    Returns:
        Per set: the mean Bit-Acc over keys and images and its deviation from 0.5; per key its mean
        Bit-Acc and checks; counts of failed checks (with the number a fair decoder would fail by
        chance, about (1 − level) per check) and, per nominal rate (``failed_at``), the keys that
        fail there, the exact null rate α and the largest clean-image rate over keys; the decoded bits' per-bit mean (a key-independent
        bias of the decoder shows here).
    """
    keys = torch.as_tensor(keys).to(torch.int64)
    if keys.ndim != 2 or keys.shape[1] != codec.n_bits:
        raise InputError(f"keys: expected K×{codec.n_bits}, got {tuple(keys.shape)}")
    transforms = resolve_search(search)
    report = {"keys": int(len(keys)), "n_bits": codec.n_bits, "fprs": list(map(float, fprs)), "level": level,
              "search": [t for t, _ in transforms], "sets": {}}
    for name, x in clean_sets.items():
        reads = read_all(lambda b: decode_bits(codec, b), x, search)
        bits = reads[0]                                          # as the image is
        per_key, accs, failed, checks_total, failed_at = [], [], 0, 0, {}
        for key in keys:
            m = best_of(reads, key)[0]
            checks = null_check(m, codec.n_bits, fprs, level=level, searched=len(transforms))
            failed += sum(not c.passed for c in checks)
            checks_total += len(checks)
            acc = float(m.double().mean() / codec.n_bits)
            accs.append(acc)
            per_key.append({"bit_acc": acc, "checks": [c.to_json() for c in checks],
                            "failed": [c.fpr for c in checks if not c.passed]})
            for c in checks:
                level_row = failed_at.setdefault(f"{c.fpr:g}", {"alpha": c.alpha, "keys_failing": 0, "max_rate": 0.0})
                level_row["keys_failing"] += int(not c.passed)
                level_row["max_rate"] = max(level_row["max_rate"], c.rate)
        mean = sum(accs) / len(accs)
        bit_mean = bits.double().mean(0)
        report["sets"][name] = {
            "images": int(len(x)), "mean_bit_acc": mean, "deviation": mean - 0.5,
            "key_bit_acc_min": min(accs), "key_bit_acc_max": max(accs),
            "checks": checks_total, "checks_failed": failed, "expected_failures_if_fair": checks_total * (1 - level),
            "keys_failing": sum(bool(k["failed"]) for k in per_key),
            "failed_at": failed_at,
            "per_bit_one_rate_min": float(bit_mean.min()), "per_bit_one_rate_max": float(bit_mean.max()),
            "per_key": per_key,
        }
    return report
