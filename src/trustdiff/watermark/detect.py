"""Detection: decode images, count the bits that match the key, test each image, decide.

    det = detect(codec, x, key, fpr=1e-6, clean=x_clean)     # x_clean: calibration images
    det.summary()  # Bit-Acc, TPR with its interval, the threshold and whether it is analytic

Each image's matches m give a one-sided p-value P(X ≥ m), X ~ Bin(n, 1/2), and the image is
detected when m reaches the threshold (:func:`trustdiff.watermark.stats.decide_threshold`:
analytic, unless clean images show that for this key it is not, then calibrated on them).

With ``search=`` (:mod:`.search`) each image is read under K declared inverse transforms, the
best match count decides and the threshold and p-values carry the union bound over the K reads;
clean calibration images go through the same search.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..metrics import proportion
from ..nets.codec import Codec
from .codec import decode_bits
from .keys import check_key
from .search import best_bits, resolve_search
from .stats import CHECK_FPRS, NullCheck, Threshold, decide_threshold, matches, search_p_value


def p_values(match_counts: torch.Tensor, n_bits: int, searched: int = 1) -> torch.Tensor:
    """p-value per image (float64 [N]; :func:`~.stats.search_p_value`, the plain one for K = 1),
    through a table of the n + 1 possible values."""
    table = torch.tensor([search_p_value(m, n_bits, searched) for m in range(n_bits + 1)], dtype=torch.float64)
    return table[match_counts.cpu().to(torch.int64)]


@dataclass
class Detection:
    """Per-image results (CPU tensors) and the threshold used."""
    bits: torch.Tensor          # N×n decoded bits
    matches: torch.Tensor       # [N] bits equal to the key
    bit_acc: torch.Tensor       # [N] matches / n
    p_values: torch.Tensor      # [N] float64
    detected: torch.Tensor      # [N] bool: matches >= threshold.value
    threshold: Threshold
    checks: list[NullCheck] = field(default_factory=list)
    transforms: tuple[str, ...] = ("id",)   # the search's transforms
    which: torch.Tensor | None = None      # [N] index of the transform each image was read under

    def summary(self, level: float = 0.95) -> dict:
        n = int(len(self.matches))
        k = int(self.detected.sum())
        return {"images": n, "n_bits": self.threshold.n_bits, "fpr": self.threshold.fpr,
                "bit_acc_mean": float(self.bit_acc.mean()) if n else None,
                "bit_acc_median": float(self.bit_acc.median()) if n else None,
                "bit_acc_min": float(self.bit_acc.min()) if n else None,
                "detected": proportion(k, n, level) if n else None,
                "median_p_value": float(self.p_values.median()) if n else None,
                "threshold": self.threshold.to_json(),
                "threshold_mode": self.threshold.mode,
                "searched": list(self.transforms),
                "read_under": ({t: int((self.which == i).sum()) for i, t in enumerate(self.transforms)}
                               if self.which is not None else None),
                "null_checks": [c.to_json() for c in self.checks]}


def detect_bits(bits: torch.Tensor, key, *, fpr: float = 1e-6, clean_bits: torch.Tensor | None = None,
                threshold: Threshold | None = None, check_fprs=CHECK_FPRS, level: float = 0.99,
                searched: int = 1) -> Detection:
    """:func:`detect` on already-decoded bits (N×n) — and clean bits for the calibration.
    ``searched``: each row is the best of K reads (the threshold and p-values carry the bound)."""
    if bits.ndim != 2:
        raise InputError(f"bits: expected N×n, got shape {tuple(bits.shape)}")
    n_bits = bits.shape[1]
    k = check_key(key, n_bits, per_image=len(bits))
    m = matches(bits.cpu(), k)
    checks: list[NullCheck] = []
    if threshold is None:
        clean_m = None
        if clean_bits is not None:
            if k.ndim != 1:
                raise InputError("calibration: per-image keys cannot be calibrated on clean images; give one key")
            clean_m = matches(clean_bits.cpu(), k)
        threshold, checks = decide_threshold(n_bits, fpr, clean_m, check_fprs=check_fprs, level=level,
                                             searched=searched)
    elif threshold.n_bits != n_bits:
        raise InputError(f"threshold: made for {threshold.n_bits} bits, the bits have {n_bits}")
    elif threshold.searched != searched:
        raise InputError(f"threshold: made for a search of {threshold.searched} transforms, the bits come from {searched}")
    return Detection(bits.cpu(), m, m.double().div(n_bits).float(), p_values(m, n_bits, searched),
                     m >= threshold.value, threshold, checks)


def detect(codec: Codec, x: torch.Tensor, key, *, fpr: float = 1e-6, clean: torch.Tensor | None = None,
           threshold: Threshold | None = None, check_fprs=CHECK_FPRS, level: float = 0.99,
           batch_size: int = 512, precision: str = "fp32", search="none") -> Detection:
    """Decode ``x`` and test each image for ``key``.

    Args:
        codec: the trained codec (its decoder is used).
        x: images N×C×H×W in [0, 1] at the codec's resolution and channels.
        key: [n] (or N×n per-image keys) of 0/1 — always given by the caller.
        fpr: the false-positive rate the decision is made at.
        clean: optional clean images (never watermarked with this key) to check the analytic
            threshold on and, where it fails, to calibrate one (see :class:`Threshold`).
        threshold: a threshold decided earlier (e.g. once for many image sets); overrides ``clean``.
        precision: the decoder's (:func:`~trustdiff.watermark.codec.decode_logits`); ``x`` and
            ``clean`` are decoded alike, so a calibrated threshold fits what it is applied to.
        search: a name of :data:`~trustdiff.watermark.search.SEARCHES` ("none": read each image
            as it is). ``x`` and ``clean`` are read through the same search.

    Decoding runs on x's device (the codec is moved there); the results are CPU tensors.
    """
    transforms = resolve_search(search)
    k = check_key(key, codec.n_bits, per_image=len(x))

    def decode(images):
        return decode_bits(codec, images, batch_size=batch_size, precision=precision)

    bits, which = best_bits(decode, x, k, search)
    clean_bits = None
    if clean is not None and threshold is None:
        if k.ndim != 1:
            raise InputError("calibration: per-image keys cannot be calibrated on clean images; give one key")
        clean_bits = best_bits(decode, clean, k, search)[0]
    det = detect_bits(bits, k, fpr=fpr, clean_bits=clean_bits, threshold=threshold, check_fprs=check_fprs, level=level,
                      searched=len(transforms))
    det.transforms, det.which = tuple(t for t, _ in transforms), which
    return det
