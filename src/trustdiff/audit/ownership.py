"""Was this model trained on my images? Two dataset-level answers side by side (issue 21; the
talk's link between privacy audits and watermarks):

* **membership inference, aggregated over the owner's set**: the per-image scores of the owner's
  training images (members) against images the owner never trained on, watermarked with the same
  key (non-members, so that the watermark itself is no difference between the sets). H₀: the model
  treats both sets alike. The one-sided Mann–Whitney U test (members score higher) gives a p-value
  for the whole set, however weak each image's evidence is: :func:`mann_whitney_test`.
* **the data watermark**: k of N generated images are detected at a per-image false-positive rate
  ≤ α (the threshold the recipe calibrates). Under H₀ (a model that never saw the key) each image
  is detected with probability ≤ α independently, so K is stochastically at most Binomial(N, α)
  and p = P(Binomial(N, α) ≥ k): :func:`detection_count_test`.

Both p-values are exact or conservative under their H₀; both are reported as log₁₀ p, because
the watermark's is far below what a float holds.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

LN10 = math.log(10.0)


def _finite(v, name: str) -> np.ndarray:
    a = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float64).reshape(-1)
    if not a.size:
        raise InputError(f"{name}: expected at least one score")
    if not np.isfinite(a).all():
        raise InputError(f"{name}: expected finite scores, got NaN or infinity")
    return a


def mann_whitney_test(member, nonmember) -> dict:
    """One-sided Mann–Whitney U test of H₀ "members score no higher than non-members" (scores:
    higher → member). U = Σ midranks of the members − m(m+1)/2 (U/(m·n) is the AUC); z uses the
    normal approximation with the tie correction of the variance and a continuity correction of ½
    (as scipy.stats.mannwhitneyu(alternative="greater", method="asymptotic")); log₁₀ p from
    the normal tail in log space, so it stays finite however small p is."""
    from scipy.stats import norm, rankdata

    m, n = _finite(member, "member scores"), _finite(nonmember, "non-member scores")
    big = m.size + n.size
    r = rankdata(np.concatenate([m, n]), method="average")
    u = float(r[: m.size].sum() - m.size * (m.size + 1) / 2)
    _, t = np.unique(np.concatenate([m, n]), return_counts=True)
    ties = float((t ** 3 - t).sum()) / (big * (big - 1)) if big > 1 else 0.0
    var = m.size * n.size / 12.0 * ((big + 1) - ties)
    if var <= 0:                                   # every score equal: no evidence either way
        z, log_p = 0.0, 0.0
    else:
        z = (u - m.size * n.size / 2.0 - 0.5) / math.sqrt(var)
        log_p = min(0.0, float(norm.logsf(z)))
    return {"test": "one-sided Mann–Whitney U (normal approximation, tie and continuity corrections)",
            "members": int(m.size), "nonmembers": int(n.size), "u": u, "auc": u / (m.size * n.size), "z": z,
            "p_value": math.exp(log_p), "log10_p": log_p / LN10}


def binomial_log_tail(k: int, n: int, p: float) -> float:
    """ln P(Binomial(n, p) ≥ k), summed in log space (exact to float rounding for any n, k, p)."""
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise InputError(f"{name}: expected an integer >= 0, got {v!r}")
    if k > n:
        raise InputError(f"k: expected at most n = {n}, got {k}")
    if not 0.0 < p < 1.0:
        raise InputError(f"p: expected a probability in (0, 1), got {p!r}")
    if k == 0:
        return 0.0
    j = np.arange(k, n + 1, dtype=np.float64)
    logs = (math.lgamma(n + 1) - np.array([math.lgamma(v + 1) for v in j]) - np.array([math.lgamma(n - v + 1) for v in j])
            + j * math.log(p) + (n - j) * math.log1p(-p))
    top = float(logs.max())
    return min(0.0, top + math.log(float(np.exp(logs - top).sum())))


def detection_count_test(k: int, n: int, fpr: float) -> dict:
    """The watermark's dataset-level test: ``k`` of ``n`` images detected at a per-image FPR ≤
    ``fpr`` → p = P(Binomial(n, fpr) ≥ k), conservative when the per-image FPR is below ``fpr``."""
    log_p = binomial_log_tail(k, n, fpr)
    return {"test": "P(Binomial(N, α) ≥ k): k of N images detected at a per-image FPR ≤ α",
            "detected": int(k), "images": int(n), "fpr": float(fpr), "p_value": math.exp(log_p), "log10_p": log_p / LN10}


def membership_dataset_tests(member_scores: dict, nonmember_scores: dict, sigmas, report: dict, seed: int = 0) -> dict:
    """Per attack, the Mann–Whitney test of the whole member set against the non-members, two
    ways that keep p valid although σ is chosen from the data:

    * ``selected``: at the σ :func:`~trustdiff.audit.membership.membership_report` selected on
      the first halves of both sets, tested on the second halves only;
    * ``bonferroni``: the smallest p over the S levels on all images, times S.

    ``report``: membership_report(member_scores, nonmember_scores, sigmas, seed=seed)."""
    from .membership import split_halves

    sig = list(report["sigmas"])
    if [float(s) for s in sigmas] != sig:
        raise InputError("membership_dataset_tests: the report was made with other σ levels")
    out = {}
    for name, ms in member_scores.items():
        ms, ns = np.asarray(ms, dtype=np.float64), np.asarray(nonmember_scores[name], dtype=np.float64)
        per = [mann_whitney_test(ms[:, j], ns[:, j]) for j in range(len(sig))]
        j = min(range(len(sig)), key=lambda i: per[i]["log10_p"])
        bonf = min(0.0, per[j]["log10_p"] + math.log10(len(sig)))
        entry = {"per_sigma": [{"sigma": s, **p} for s, p in zip(sig, per)],
                 "bonferroni": {"sigma": sig[j], "levels": len(sig), "log10_p": bonf, "p_value": 10.0 ** bonf}}
        sel = report["attacks"][name].get("selected")
        if sel is not None:
            _, bm, _, bn = split_halves(ms.shape[0], ns.shape[0], seed)
            i = sig.index(sel["sigma"])
            entry["selected"] = {"sigma": sel["sigma"], **mann_whitney_test(ms[bm, i], ns[bn, i]),
                                 "selected": "σ chosen on half of each set, tested on the other half"}
        out[name] = entry
    return out


__all__ = ["mann_whitney_test", "binomial_log_tail", "detection_count_test", "membership_dataset_tests"]
