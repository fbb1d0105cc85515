"""Confidence intervals for proportions: every accuracy, detection rate or false-positive rate
trustdiff reports carries its n and an exact (Clopper–Pearson) interval. Two models scored on the
same examples are compared paired (:func:`mcnemar`, per-example outcomes as :func:`outcome_bits`)."""
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


def outcome_bits(mask) -> str:
    """Per-example outcomes (bool [N]) as a string of N '0'/'1' characters: how reports keep which
    examples were correct, so two models scored on the same examples can be compared paired."""
    m = torch.as_tensor(mask).flatten()
    if m.dtype != torch.bool:
        raise InputError(f"outcome_bits: expected a bool tensor, got dtype {m.dtype}")
    return "".join("1" if v else "0" for v in m.tolist())


def _outcomes(v, name: str) -> list[bool]:
    if isinstance(v, str):
        if set(v) - {"0", "1"}:
            raise InputError(f"mcnemar: {name} as a string must hold only '0' and '1'")
        return [c == "1" for c in v]
    t = torch.as_tensor(v).flatten()
    if t.dtype != torch.bool:
        raise InputError(f"mcnemar: {name} expected bools or an outcome_bits string, got dtype {t.dtype}")
    return t.tolist()


def mcnemar(a, b) -> dict:
    """Exact McNemar test of two classifiers scored on the same n examples (McNemar 1947): of the
    discordant pairs, ``n10`` examples only ``a`` gets right and ``n01`` only ``b`` does; under
    H0 (equal accuracy) n10 ~ Binomial(n10 + n01, 1/2), and ``p_exact`` is its two-sided binomial
    p-value (1 with no discordant pair). Pairing removes the examples both get right or both get
    wrong, so it separates accuracies that two unpaired intervals cannot. ``a`` and ``b``: bool
    [n] or :func:`outcome_bits` strings. ``difference`` = accuracy(a) − accuracy(b)."""
    from scipy.stats import binomtest

    a, b = _outcomes(a, "a"), _outcomes(b, "b")
    if len(a) != len(b) or not a:
        raise InputError(f"mcnemar: expected outcomes on the same n >= 1 examples, got {len(a)} and {len(b)}")
    n10 = sum(x and not y for x, y in zip(a, b))
    n01 = sum(y and not x for x, y in zip(a, b))
    p = float(binomtest(n10, n10 + n01, 0.5).pvalue) if n10 + n01 else 1.0
    return {"n": len(a), "n10": n10, "n01": n01, "difference": (n10 - n01) / len(a), "p_exact": min(p, 1.0),
            "method": "exact McNemar (two-sided binomial on the discordant pairs)"}


def holm(pvalues) -> list[float]:
    """Holm's (1979) step-down adjustment of m p-values for the family-wise error rate: sorted
    ascending, p₍ᵢ₎ becomes max over j ≤ i of min(1, (m − j + 1)·p₍ⱼ₎); returned in the input order.
    Reject H0ᵢ at level α when the adjusted pᵢ ≤ α."""
    p = [float(v) for v in pvalues]
    if any(not 0 <= v <= 1 for v in p):
        raise InputError(f"holm: expected p-values in [0, 1], got {p}")
    m, out, run = len(p), [0.0] * len(p), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        run = max(run, min(1.0, (m - rank) * p[i]))
        out[i] = run
    return out


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


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n, ties given their mean rank."""
    order = torch.argsort(v, stable=True)
    r = torch.empty(len(v), dtype=torch.float64)
    r[order] = torch.arange(1, len(v) + 1, dtype=torch.float64)
    for u in torch.unique(v):
        tie = v == u
        r[tie] = r[tie].mean()
    return r


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float((a.norm() * b.norm()))
    return float((a * b).sum()) / den if den > 0 else float("nan")


def rank_correlation(a, b, level: float = 0.95) -> dict:
    """Spearman's ρ between paired values with a Fisher-z interval (tanh(atanh ρ ± z·√(1.06/(n − 3))),
    Fieller, Hartley & Pearson 1957; None for n ≤ 3) and the exact two-sided permutation p-value
    over all n! pairings (n ≤ 8; else None): a small sweep's ρ is reported with what it can support."""
    import itertools

    from scipy.stats import norm

    a, b = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    n = len(a)
    if n != len(b) or n < 2:
        raise InputError(f"rank_correlation: expected two sequences of the same length >= 2, got {len(a)} and {len(b)}")
    ra, rb = _ranks(a), _ranks(b)
    rho = round(_pearson(ra, rb), 12)                  # ±1 exactly when the ranks agree exactly
    out = {"rho": rho, "n": n, "level": level, "lo": None, "hi": None, "p_exact": None,
           "method": "Spearman; Fisher z with variance 1.06/(n-3); exact permutation p"}
    if n > 3 and abs(rho) < 1:
        h = norm.ppf(0.5 + level / 2) * math.sqrt(1.06 / (n - 3))
        out["lo"], out["hi"] = math.tanh(math.atanh(rho) - h), math.tanh(math.atanh(rho) + h)
    if n <= 8 and rho == rho:
        perms = [_pearson(ra, rb[list(p)]) for p in itertools.permutations(range(n))]
        out["p_exact"] = sum(abs(r) >= abs(rho) - 1e-12 for r in perms) / len(perms)
    return out
