"""Confidence intervals for proportions: every accuracy, detection rate or false-positive rate
trustdiff reports carries its n and an exact (Clopper–Pearson) interval."""
from __future__ import annotations

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
