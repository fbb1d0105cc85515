"""Detection statistics: exact one-sided binomial tests, per-key null calibration, the decision.

Under the null (an image that does not carry the key), each decoded bit is taken to match the key
with probability 1/2, independently, so the number of matches X ~ Bin(n, 1/2):

* :func:`p_value` — P(X ≥ m), the one-sided p-value of m matches;
* :func:`match_threshold` — the least m with P(X ≥ m) ≤ fpr (the detection threshold).

Both are exact: sums of binomial coefficients in integer arithmetic, divided by 2**n once.

**Detection under a search.** When the decoder reads each image under K declared transforms
(un-flip, un-shift …) and the decision uses the best of the K match counts, M = max_t X_t, the
K counts of one clean image are dependent (the same image, transformed), so their joint law is
not known; the union bound holds whatever the dependence:

    P(M ≥ m) ≤ Σ_t P(X_t ≥ m) = K · P(X ≥ m)        (Bonferroni)

so :func:`search_p_value` is min(1, K·P(X ≥ m)) and the threshold at rate α is
``match_threshold(n, α / K)`` (:func:`search_threshold`). The bound can only be conservative;
null checks through a search therefore fail only on the anti-conservative side (``excess``).

For one fixed key, a decoder's bits on clean images need not be fair coins (it may read nearly
the same string from every clean image), so the analytic false-positive rate can be wrong for that
key even when it is right on average over keys. :func:`null_check` measures it on clean images;
:func:`decide_threshold` keeps the analytic threshold where the check passes and otherwise uses a
threshold calibrated on the clean images, saying which.
"""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache

import torch

from ..errors import InputError
from ..metrics.intervals import clopper_pearson

#: the nominal rates at which a key's null is checked, besides the operating rate
CHECK_FPRS = (1e-1, 1e-2, 1e-3)


def _as_int(name: str, v) -> int:
    if isinstance(v, bool):
        raise InputError(f"{name}: expected an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise InputError(f"{name}: expected an integer, got {v!r}") from None


def _check_counts(n_match, n_bits) -> tuple[int, int]:
    m, n = _as_int("n_match", n_match), _as_int("n_bits", n_bits)
    if n < 1 or not 0 <= m <= n:
        raise InputError(f"p_value: expected 0 <= n_match <= n_bits and n_bits >= 1, got n_match={m}, n_bits={n}")
    return m, n


@lru_cache(maxsize=64)
def _tail_counts(n: int) -> tuple[int, ...]:
    """T[m] = Σ_{k≥m} C(n, k) for m = 0..n+1 (integers)."""
    tails = [0] * (n + 2)
    for m in range(n, -1, -1):
        tails[m] = tails[m + 1] + math.comb(n, m)
    return tuple(tails)


def p_value(n_match: int, n_bits: int) -> float:
    """One-sided binomial p-value P(X ≥ n_match), X ~ Bin(n_bits, 1/2): exact, correctly rounded.

    ``p_value(n, n) == 2**-n``; ``p_value(0, n) == 1``.
    """
    m, n = _check_counts(n_match, n_bits)
    return float(Fraction(_tail_counts(n)[m], 2 ** n))


def check_reachable(n_bits: int, fpr: float) -> None:
    """Raise InputError when no outcome of ``n_bits`` fair coins reaches ``fpr`` (the least
    p-value, all bits matching, is 2^-n): detection would be impossible."""
    if match_threshold(n_bits, fpr) > n_bits:
        raise InputError(f"--fpr: {n_bits} bits cannot be detected at FPR {fpr:g} (the least p-value is "
                         f"2^-{n_bits} = {2.0 ** -n_bits:.3g}); expected --fpr >= {2.0 ** -n_bits:.3g} or more bits")


def match_threshold(n_bits: int, fpr: float) -> int:
    """The least m with P(X ≥ m) ≤ fpr, X ~ Bin(n_bits, 1/2): detect when matches ≥ m.

    Returns n_bits + 1 when even n_bits matches are more likely than ``fpr`` under the null (e.g.
    4 bits at fpr 1e-6): no outcome is significant, nothing is detected. The exact false-positive
    rate of the threshold, ``p_value(m, n)`` (0 for n + 1), is at most ``fpr`` and usually below it.
    """
    n_bits = _as_int("n_bits", n_bits)
    if n_bits < 1:
        raise InputError(f"match_threshold: expected n_bits >= 1, got {n_bits}")
    try:
        f = float(fpr)
    except (TypeError, ValueError):
        raise InputError(f"match_threshold: expected fpr a number in (0, 1], got {fpr!r}") from None
    if not 0 < f <= 1:
        raise InputError(f"match_threshold: expected fpr in (0, 1], got {fpr!r}")
    tails, whole = _tail_counts(n_bits), 2 ** n_bits
    limit = Fraction(f) * whole  # compare T[m] / 2**n <= fpr in exact arithmetic
    for m in range(0, n_bits + 2):
        if tails[m] <= limit:
            return m
    return n_bits + 1  # pragma: no cover — T[n+1] = 0 always satisfies the test


def _check_searched(searched) -> int:
    k = _as_int("searched", searched)
    if k < 1:
        raise InputError(f"searched: expected the number of transforms searched, >= 1, got {k}")
    return k


def search_p_value(n_match: int, n_bits: int, searched: int = 1) -> float:
    """min(1, K·P(X ≥ m)): a valid p-value for the best of K match counts (the union bound;
    see the module docstring). K = 1 is :func:`p_value`."""
    return min(1.0, _check_searched(searched) * p_value(n_match, n_bits))


def search_threshold(n_bits: int, fpr: float, searched: int = 1) -> int:
    """The least m with K·P(X ≥ m) ≤ fpr: detect when the best of K match counts reaches it.
    Its false-positive rate is at most :func:`search_fpr` ≤ fpr, under any dependence."""
    return match_threshold(n_bits, float(fpr) / _check_searched(searched))


def search_fpr(n_bits: int, threshold: int, searched: int = 1) -> float:
    """min(1, K·P(X ≥ threshold)): the bound on the false-positive rate of a searched threshold."""
    return min(1.0, _check_searched(searched) * exact_fpr(n_bits, threshold))


def exact_fpr(n_bits: int, threshold: int) -> float:
    """P(X ≥ threshold) under the null: the false-positive rate the analytic threshold really has."""
    if threshold > n_bits:
        return 0.0
    return p_value(max(int(threshold), 0), n_bits)


def matches(bits: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Per-image number of bits equal to the key: int64 [N]. ``bits`` N×n of 0/1; ``key`` [n] or N×n."""
    if bits.ndim != 2 or bits.shape[-1] != key.shape[-1]:
        raise InputError(f"matches: expected bits N×{key.shape[-1]}, got {tuple(bits.shape)}")
    return (bits.to(torch.int64) == key.to(bits.device, torch.int64)).sum(1)


def bit_accuracy(bits: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Bit-Acc per image, (1/n) Σ_k 1(bits[k] = key[k]): float [N]."""
    return matches(bits, key).double().div(key.shape[-1]).float()


@dataclass(frozen=True)
class NullCheck:
    """One check of the analytic threshold on clean images: at nominal rate ``fpr`` the threshold
    is ``threshold`` with exact null rate ``alpha``; ``k`` of ``n`` clean images reached it. The
    check passes (``within``) when ``alpha`` lies in the Clopper–Pearson interval [lo, hi] of k/n
    at ``level``; ``excess`` marks a failure on the anti-conservative side (too many hits).
    Through a search of ``searched`` = K > 1 transforms, ``alpha`` is the union bound (an upper
    bound, not the rate) and the check passes unless ``excess`` (:attr:`passed`)."""
    fpr: float
    threshold: int
    alpha: float
    k: int
    n: int
    rate: float
    lo: float
    hi: float
    level: float
    within: bool
    excess: bool
    searched: int = 1

    @property
    def passed(self) -> bool:
        return self.within if self.searched == 1 else not self.excess

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def null_check(clean_matches, n_bits: int, fprs=CHECK_FPRS, *, level: float = 0.99,
               searched: int = 1) -> list[NullCheck]:
    """Check the analytic thresholds for one key on clean images.

    Args:
        clean_matches: matches with the key of each clean image, integers [N] (:func:`matches`).
        n_bits: n.
        fprs: the nominal rates to check (each gives a threshold :func:`search_threshold`).
        level: confidence level of each interval.
        searched: K, when each count is the best of K transforms (:func:`search_threshold`).

    Returns:
        One :class:`NullCheck` per rate.
    """
    m = torch.as_tensor(clean_matches).to(torch.int64).flatten()
    if m.numel() < 1:
        raise InputError("null_check: expected at least one clean image, got none")
    out = []
    for f in fprs:
        t = search_threshold(n_bits, f, searched)
        alpha = search_fpr(n_bits, t, searched)
        k, n = int((m >= t).sum()), int(m.numel())
        lo, hi = clopper_pearson(k, n, level)
        out.append(NullCheck(float(f), t, alpha, k, n, k / n, lo, hi, level, lo <= alpha <= hi, alpha < lo, int(searched)))
    return out


def empirical_threshold(clean_matches, n_bits: int, fpr: float) -> int:
    """The least m whose empirical exceedance on the clean images is ≤ fpr: at most
    ⌊fpr·N⌋ of the N clean images have ≥ m matches. When fpr·N < 1 this is one more than the
    largest clean match count (no clean image reaches it). May be n_bits + 1."""
    m = torch.as_tensor(clean_matches).to(torch.int64).flatten()
    allowed = math.floor(float(fpr) * m.numel())
    for t in range(0, n_bits + 2):
        if int((m >= t).sum()) <= allowed:
            return t
    return n_bits + 1  # pragma: no cover


@dataclass(frozen=True)
class Threshold:
    """The detection threshold in use: detect when matches ≥ ``value``.

    ``mode`` is ``"analytic"`` (:func:`search_threshold`; its exact null rate is ``alpha``, or
    with ``searched`` = K > 1 transforms, ``alpha`` bounds it) or
    ``"calibrated"`` (the analytic threshold failed a null check for this key, so ``value`` is the
    larger of it and :func:`empirical_threshold` on ``n_clean`` clean images; the false-positive
    rate is then an empirical bound, at best ~3/n_clean at 95%, not ``fpr``)."""
    value: int
    mode: str
    fpr: float
    n_bits: int
    analytic: int
    alpha: float
    n_clean: int = 0
    empirical: int | None = None
    reason: str = ""
    searched: int = 1

    def to_json(self) -> dict:
        return asdict(self)


def decide_threshold(n_bits: int, fpr: float, clean_matches=None, *, check_fprs=CHECK_FPRS,
                     level: float = 0.99, searched: int = 1) -> tuple[Threshold, list[NullCheck]]:
    """The threshold to detect with at ``fpr``, and the null checks behind the choice.

    Without clean images the analytic threshold is used (``mode="analytic"``, reason "no clean
    images"). With them, the analytic threshold is checked at ``check_fprs`` and at ``fpr``
    (:func:`null_check`); if every check passes it is kept, else the threshold is calibrated
    (``mode="calibrated"``; see :class:`Threshold`). ``searched``: the counts are the best of K
    transforms; the threshold is :func:`search_threshold` and the checks are one-sided.
    """
    k = _check_searched(searched)
    analytic = search_threshold(n_bits, fpr, k)
    alpha = search_fpr(n_bits, analytic, k)
    if clean_matches is None:
        return Threshold(analytic, "analytic", float(fpr), n_bits, analytic, alpha, reason="no clean images given",
                         searched=k), []
    rates = sorted({*map(float, check_fprs), float(fpr)}, reverse=True)
    checks = null_check(clean_matches, n_bits, rates, level=level, searched=k)
    n_clean = checks[0].n
    failed = [c for c in checks if not c.passed]
    if not failed:
        return Threshold(analytic, "analytic", float(fpr), n_bits, analytic, alpha, n_clean,
                         reason=f"null checks passed at {', '.join(f'{c.fpr:g}' for c in checks)}", searched=k), checks
    emp = empirical_threshold(clean_matches, n_bits, fpr)
    why = "; ".join(f"at {c.fpr:g}: {c.k}/{c.n} clean ≥ {c.threshold}, null rate {c.alpha:.2g} outside "
                    f"[{c.lo:.2g}, {c.hi:.2g}]" for c in failed)
    return Threshold(max(analytic, emp), "calibrated", float(fpr), n_bits, analytic, alpha, n_clean, emp, why,
                     searched=k), checks
