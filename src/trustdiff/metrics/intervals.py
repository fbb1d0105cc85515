"""Confidence intervals for proportions: every accuracy, detection rate or false-positive rate
trustdiff reports carries its n and an exact (Clopper–Pearson) interval."""
from __future__ import annotations

import math

import torch
from scipy.stats import beta

from ..errors import InputError


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided exact interval for a binomial proportion from k successes in n trials:
    [Beta_{α/2}(k, n−k+1), Beta_{1−α/2}(k+1, n−k)], with 0 and 1 at the ends (α = 1 − level)."""
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise InputError(f"clopper_pearson: expected 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0 < level < 1:
        raise InputError(f"clopper_pearson: expected 0 < level < 1, got {level}")
    a = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def proportion(k: int, n: int, level: float = 0.95) -> dict:
    """``{"value": k/n, "k": k, "n": n, "lo": ..., "hi": ..., "level": level}`` — the form every
    reported rate takes in metrics.json."""
    lo, hi = clopper_pearson(k, n, level)
    return {"value": int(k) / int(n), "k": int(k), "n": int(n), "lo": lo, "hi": hi, "level": level}


def bounded_mean(values, level: float = 0.95) -> dict:
    """The mean of n independent values in [0, 1] with Hoeffding's two-sided interval
    mean ± √(ln(2/α)/(2n)), clipped to [0, 1]: valid for any distribution on [0, 1] (conservative;
    no normal approximation). The form of :func:`proportion` with ``"method": "hoeffding"``."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = v.numel()
    if n < 1 or not bool(((v >= 0) & (v <= 1)).all()):
        raise InputError(f"bounded_mean: expected n >= 1 values in [0, 1], got n={n}")
    if not 0 < level < 1:
        raise InputError(f"bounded_mean: expected 0 < level < 1, got {level}")
    m, h = float(v.mean()), math.sqrt(math.log(2 / (1 - level)) / (2 * n))
    return {"value": m, "n": n, "lo": max(0.0, m - h), "hi": min(1.0, m + h), "level": level, "method": "hoeffding"}
