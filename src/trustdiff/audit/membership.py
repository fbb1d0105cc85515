"""Membership inference against diffusion models: per-σ denoising loss, the loss-threshold attack
(Matsumoto et al. 2023), PIA (Kong et al. 2024), and the metrics the field asks for (ROC AUC,
TPR at FPR 1% and 0.1%, each with its interval).

Everything goes through the Denoiser contract ``D(x, σ, cond)`` (model space, σ in model units),
so it works for every model trustdiff loads. With ε̂(x, σ) = (x − D(x, σ))/σ — the noise
prediction a DDPM network makes at the matching step, since x = x_t/√ᾱ_t for σ² = (1 − ᾱ_t)/ᾱ_t:

* **loss attack** (Matsumoto et al. 2023): the denoising loss at a noise level,
  ‖ε − ε̂(x₀ + σε, σ)‖² = ‖D(x₀ + σε, σ) − x₀‖²/σ² (mean over pixels), averaged over
  ``repeats`` noise draws. The draws are one fixed seeded set shared by every image, member or
  not, so two images are compared under the same noise and a score depends only on the image and
  the seed (not on batching). Lower loss → member.
* **PIA** (Kong et al. 2024, *An Efficient Membership Inference Attack for the Diffusion Model by
  Proximal Initialization*): no random noise at all. ε₀ = ε̂(x₀, σ₀) is the model's own noise
  prediction at its smallest noise level σ₀ (DDPM's t = 0) for the clean image; the probe point is
  x₀ + σ·ε₀ (DDPM: √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε₀), and the score is ‖ε̂(x₀ + σε₀, σ) − ε₀‖₄⁴ (mean of
  |·|⁴ over pixels; the authors' code uses the ℓ4 norm). A member's trajectory from its proximal
  initialisation is one the network fitted, so the two predictions agree: lower → member. Two
  network calls per σ, deterministic.

A score's convention here is *higher = more likely a member* (the attacks return −loss). The
metrics: AUC by Mann–Whitney (exact: the fraction of (member, non-member) pairs ordered right,
ties ½) with DeLong's asymptotic interval; TPR at FPR ≤ α at the threshold set on the non-members
(at most ⌊α·n₀⌋ of them above it; ties count against the attack), with Clopper–Pearson intervals
on the TPR and on the FPR reached. With fewer than 1/α non-members no false positive is allowed at
FPR α and the metric says so (``below_resolution``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError
from ..images import check_images, to_model


def _proportion(k: int, n: int, level: float = 0.95) -> dict:
    """:func:`trustdiff.metrics.intervals.proportion`, imported when first needed (the metrics
    package pulls in the network libraries, which ``audit subset`` does not need)."""
    from ..metrics.intervals import proportion as p

    return p(k, n, level)

#: the FPRs reported (Carlini et al. 2022, "Membership inference attacks from first principles")
FPRS = (0.01, 0.001)
ATTACKS = ("loss", "pia")


def _sigmas(sigmas) -> list[float]:
    s = [float(v) for v in (sigmas if isinstance(sigmas, (list, tuple)) else torch.as_tensor(sigmas).reshape(-1).tolist())]
    if not s or not all(math.isfinite(v) and v > 0 for v in s):
        raise InputError(f"sigmas: expected one or more noise levels > 0, got {sigmas!r}")
    return s


def _batches(n: int, batch: int):
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch: expected an integer >= 1, got {batch!r}")
    return range(0, n, batch)


def _cond(cond, lo, hi, device):
    return None if cond is None else torch.as_tensor(cond)[lo:hi].to(device)


def loss_at_sigmas(denoiser, x: torch.Tensor, sigmas, *, generator: torch.Generator | None = None, repeats: int = 1,
                   cond=None, batch: int = 256) -> torch.Tensor:
    """The ε-prediction loss of every image at every σ: [N, S], on x's device.

    Args:
        denoiser: any Denoiser ``D(x, σ, cond)``.
        x: pixel-space images N×C×H×W in [0, 1] (mapped to model space here).
        sigmas: S noise levels, model units.
        generator: draws the fixed noise, ``repeats × S`` standard normal C×H×W tensors shared by
            every image (drawn on the generator's device, moved to x's).
        repeats: noise draws averaged per (image, σ).
        cond: optional conditioning [N] (class labels) passed to the denoiser.
        batch: images per denoiser call.

    Returns:
        mean over pixels of (D(x₀ + σε, σ) − x₀)²/σ², averaged over the draws; float32 [N, S].
    """
    check_images(x, name="images")
    sig = _sigmas(sigmas)
    if not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats: expected an integer >= 1, got {repeats!r}")
    where = generator.device if generator is not None else x.device
    noise = torch.randn((repeats, len(sig), *x.shape[1:]), generator=generator, device=where,
                        dtype=x.dtype).to(x.device)
    out = torch.zeros(x.shape[0], len(sig), device=x.device, dtype=torch.float32)
    for lo in _batches(x.shape[0], batch):
        x0 = to_model(x[lo: lo + batch])
        c = _cond(cond, lo, lo + x0.shape[0], x.device)
        for j, s in enumerate(sig):
            acc = torch.zeros(x0.shape[0], device=x.device, dtype=torch.float32)
            for r in range(repeats):
                d = denoiser(x0 + s * noise[r, j], torch.full((x0.shape[0],), s, device=x.device, dtype=x.dtype), c)
                acc += ((d - x0).float().square().flatten(1).mean(1)) / s**2
            out[lo: lo + x0.shape[0], j] = acc / repeats
    return out


def pia_at_sigmas(denoiser, x: torch.Tensor, sigmas, *, sigma0: float, cond=None, batch: int = 256,
                  p: float = 4.0) -> torch.Tensor:
    """PIA's distance of every image at every σ: [N, S] on x's device (lower → member).

    ε₀ = (x₀ − D(x₀, σ₀))/σ₀; for each σ, ε̂ = (x_σ − D(x_σ, σ))/σ at x_σ = x₀ + σ·ε₀; the value is
    mean over pixels of |ε̂ − ε₀|^p. ``sigma0`` is the model's smallest noise level (DDPM's t = 0;
    a trustdiff model's ``spec.sigma_min``). Deterministic: no noise is drawn."""
    check_images(x, name="images")
    sig = _sigmas(sigmas)
    if not (math.isfinite(sigma0) and sigma0 > 0):
        raise InputError(f"sigma0: expected > 0, got {sigma0!r}")
    out = torch.zeros(x.shape[0], len(sig), device=x.device, dtype=torch.float32)
    for lo in _batches(x.shape[0], batch):
        x0 = to_model(x[lo: lo + batch])
        c = _cond(cond, lo, lo + x0.shape[0], x.device)
        full = lambda s: torch.full((x0.shape[0],), s, device=x.device, dtype=x.dtype)  # noqa: E731
        eps0 = (x0 - denoiser(x0, full(sigma0), c)) / sigma0
        for j, s in enumerate(sig):
            xs = x0 + s * eps0
            eps = (xs - denoiser(xs, full(s), c)) / s
            out[lo: lo + x0.shape[0], j] = (eps - eps0).float().abs().pow(p).flatten(1).mean(1)
    return out


def attack_scores(attack: str, denoiser, x, sigmas, *, seed: int = 0, repeats: int = 1, cond=None, batch: int = 256,
                  sigma0: float = 0.002) -> torch.Tensor:
    """Membership scores [N, S] (higher → member) of ``attack`` ("loss" or "pia"); the loss
    attack's noise comes from a CPU generator seeded with ``seed`` (the same on every device)."""
    if attack == "loss":
        g = torch.Generator().manual_seed(int(seed))
        return -loss_at_sigmas(denoiser, x, sigmas, generator=g, repeats=repeats, cond=cond, batch=batch)
    if attack == "pia":
        return -pia_at_sigmas(denoiser, x, sigmas, sigma0=sigma0, cond=cond, batch=batch)
    raise InputError(f"attack: expected one of {', '.join(ATTACKS)}, got {attack!r}")


# ---- metrics ------------------------------------------------------------------------------------

def _np(v) -> np.ndarray:
    a = v.detach().double().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)
    a = a.reshape(-1)
    if not a.size:
        raise InputError("scores: expected at least one member and one non-member score")
    if not np.isfinite(a).all():
        raise InputError("scores: expected finite values, got NaN or infinity")
    return a


def _np2(v) -> np.ndarray:
    """[N, S] scores as float64 NumPy."""
    return v.detach().double().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)


def _midranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return rankdata(a, method="average")


def auc(member, nonmember) -> float:
    """ROC AUC = P(s_member > s_nonmember) + ½·P(tie), by Mann–Whitney: exact."""
    m, n = _np(member), _np(nonmember)
    r = _midranks(np.concatenate([m, n]))
    return float((r[: m.size].sum() - m.size * (m.size + 1) / 2) / (m.size * n.size))


def auc_interval(member, nonmember, level: float = 0.95) -> tuple[float, float]:
    """DeLong et al. (1988) interval for the AUC (asymptotic normal, clipped to [0, 1]); a
    degenerate variance (perfect or constant separation) gives the point itself."""
    from scipy.stats import norm

    m, n = _np(member), _np(nonmember)
    tz = _midranks(np.concatenate([m, n]))
    v10 = (tz[: m.size] - _midranks(m)) / n.size           # per member: fraction of non-members below
    v01 = 1.0 - (tz[m.size:] - _midranks(n)) / m.size       # per non-member: fraction of members above
    a = float(v10.mean())
    var = (v10.var(ddof=1) / m.size if m.size > 1 else 0.0) + (v01.var(ddof=1) / n.size if n.size > 1 else 0.0)
    h = float(norm.ppf(0.5 + level / 2)) * math.sqrt(max(var, 0.0))
    return max(0.0, a - h), min(1.0, a + h)


def roc_curve(member, nonmember) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every threshold, from (0, 0) to (1, 1); a member is predicted when its score
    is ≥ the threshold."""
    m, n = _np(member), _np(nonmember)
    thr = np.unique(np.concatenate([m, n]))[::-1]
    ms, ns = np.sort(m), np.sort(n)
    tpr = (m.size - np.searchsorted(ms, thr, side="left")) / m.size
    fpr = (n.size - np.searchsorted(ns, thr, side="left")) / n.size
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def tpr_at_fpr(member, nonmember, fpr: float, level: float = 0.95) -> dict:
    """TPR at FPR ≤ ``fpr``: the threshold lets at most ⌊fpr·n₀⌋ non-members score above it (a
    score equal to the first excluded non-member's is not counted, so ties never push the FPR
    over). Returns {"target_fpr", "tpr": proportion, "fpr": proportion (reached), "threshold",
    "below_resolution": fpr·n₀ < 1 (no false positive allowed at all)}."""
    if not 0 < fpr < 1:
        raise InputError(f"fpr: expected in (0, 1), got {fpr!r}")
    m, n = _np(member), _np(nonmember)
    allowed = int(math.floor(fpr * n.size + 1e-9))
    desc = np.sort(n)[::-1]
    thr = float(desc[allowed]) if allowed < n.size else -math.inf   # predict member iff score > thr
    tp, fp = int((m > thr).sum()), int((n > thr).sum())
    return {"target_fpr": fpr, "tpr": _proportion(tp, m.size, level), "fpr": _proportion(fp, n.size, level),
            "threshold": thr, "below_resolution": fpr * n.size < 1}


def attack_metrics(member, nonmember, fprs=FPRS, level: float = 0.95) -> dict:
    """AUC (with DeLong interval) and TPR at each FPR of ``fprs`` for one score."""
    lo, hi = auc_interval(member, nonmember, level)
    m, n = _np(member), _np(nonmember)
    return {"auc": auc(m, n), "auc_interval": [lo, hi], "auc_interval_kind": f"DeLong {level:.0%} (asymptotic)",
            "members": int(m.size), "nonmembers": int(n.size),
            "tpr_at_fpr": {f"{f:g}": tpr_at_fpr(m, n, f, level) for f in fprs}}


def random_guess(n_members: int, n_nonmembers: int, fprs=FPRS) -> dict:
    """What guessing achieves (the baseline every attack is read against): AUC ½, TPR = FPR."""
    return {"auc": 0.5, "tpr_at_fpr": {f"{f:g}": f for f in fprs}, "members": n_members, "nonmembers": n_nonmembers}


def split_halves(n_members: int, n_nonmembers: int, seed: int = 0):
    """(first half of the members, second half, first half of the non-members, second half):
    index arrays of one seeded permutation of each set (NumPy PCG64); the first halves choose σ,
    the second ones measure (:func:`membership_report`'s ``selected``)."""
    g = np.random.default_rng(seed)
    pm, pn = g.permutation(n_members), g.permutation(n_nonmembers)
    return pm[: len(pm) // 2], pm[len(pm) // 2:], pn[: len(pn) // 2], pn[len(pn) // 2:]


def membership_report(member_scores: dict, nonmember_scores: dict, sigmas, fprs=FPRS, level: float = 0.95,
                      seed: int = 0) -> dict:
    """Per attack: the metrics at every σ, at the best σ, and at a σ chosen without peeking.
    ``*_scores``: attack → [N, S] scores (higher → member).

    * ``best``: the σ of highest AUC, chosen on the very sets it is evaluated on (as the papers
      report their best timestep): optimistic by the choice among S levels.
    * ``selected``: members and non-members are split in halves by a seeded permutation; the σ of
      highest AUC on the first halves is evaluated on the second halves only — an unbiased
      estimate of an attacker who must fix σ beforehand, on half the images."""
    sig = _sigmas(sigmas)
    out = {"sigmas": sig, "fprs": list(fprs), "attacks": {}}
    for name, ms in member_scores.items():
        ns = nonmember_scores[name]
        per = [{"sigma": s, **attack_metrics(ms[:, j], ns[:, j], fprs, level)} for j, s in enumerate(sig)]
        best = max(range(len(sig)), key=lambda j: per[j]["auc"])
        entry = {"per_sigma": per, "best": {**per[best], "selected": "post hoc: the σ of highest AUC on these sets"}}
        am, bm, an, bn = split_halves(ms.shape[0], ns.shape[0], seed)
        if min(len(am), len(an)) >= 1:
            ms_, ns_ = _np2(ms), _np2(ns)
            j = max(range(len(sig)), key=lambda j: auc(ms_[am, j], ns_[an, j]))
            entry["selected"] = {"sigma": sig[j], **attack_metrics(ms_[bm, j], ns_[bn, j], fprs, level),
                                 "selected": "σ of highest AUC on half of each set, measured on the other half"}
        out["attacks"][name] = entry
    some = next(iter(member_scores.values())) if member_scores else None
    if some is not None:
        out["random_guess"] = random_guess(int(some.shape[0]), int(next(iter(nonmember_scores.values())).shape[0]), fprs)
    return out


def plot_roc(path, curves: dict, title: str = "membership inference") -> None:
    """ROC curves (name → (member scores, non-member scores)) on log-log axes, as Carlini et
    al. (2022) plot them, with the diagonal (random guessing); a PNG at ``path``."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..persist import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for name, (m, n) in curves.items():
        f, t = roc_curve(m, n)
        a = auc(m, n)
        for ax in axes:
            ax.plot(f, t, lw=1.2, label=f"{name} (AUC {a:.3f})")
    lo = 1.0 / max(max((len(_np(n)) for _, n in curves.values()), default=10), 10)
    axes[0].plot([0, 1], [0, 1], "k--", lw=0.8, label="random guess")
    axes[1].plot([lo, 1], [lo, 1], "k--", lw=0.8, label="random guess")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlim(lo / 2, 1)
    axes[1].set_ylim(lo / 2, 1.05)
    for ax in axes:
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---- members and non-members of a training set ---------------------------------------------------

def member_split(imageset, n: int, *, seed: int = 0, nonmembers: int = 0, duplicate: int = 0, times: int = 1):
    """Split ``imageset`` (a :class:`trustdiff.data.ImageSet`) into a training set of ``n`` images
    and non-members (the rest, or ``nonmembers`` of them when > 0), by a seeded permutation (NumPy
    PCG64). With ``duplicate`` = K and ``times`` = R, the first K members occur R times each in the
    training set (the duplication of Carlini et al. §7). Returns (train ImageSet, non-member
    ImageSet, info dict with the chosen indices)."""
    from ..data import ImageSet

    total = len(imageset.images)
    for name, v, lo in (("n", n, 1), ("nonmembers", nonmembers, 0), ("duplicate", duplicate, 0), ("times", times, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name}: expected an integer >= {lo}, got {v!r}")
    if n >= total:
        raise InputError(f"n: expected fewer than the {total} images of {imageset.name} (some must stay non-members), got {n}")
    if duplicate > n:
        raise InputError(f"duplicate: expected at most n = {n} images to duplicate, got {duplicate}")
    rest = total - n
    if nonmembers > rest:
        raise InputError(f"nonmembers: expected at most the {rest} images left after {n} members, got {nonmembers}")
    perm = np.random.default_rng(seed).permutation(total)
    mem, non = perm[:n], perm[n: n + nonmembers] if nonmembers else perm[n:]
    rows = np.concatenate([np.repeat(mem[:duplicate], times), mem[duplicate:]]) if duplicate else mem
    mk = lambda idx, suffix: ImageSet(imageset.images[idx], imageset.labels[idx], imageset.num_classes,  # noqa: E731
                                      f"{imageset.name}-{suffix}", imageset.source, imageset.classes)
    info = {"pool": total, "members": int(n), "training_rows": int(len(rows)), "nonmembers": int(len(non)),
            "duplicated": int(duplicate), "times": int(times), "seed": int(seed),
            "member_indices": mem.tolist(), "nonmember_indices": non.tolist()}
    return mk(rows, "members"), mk(non, "nonmembers"), info


__all__ = ["FPRS", "ATTACKS", "loss_at_sigmas", "pia_at_sigmas", "attack_scores", "auc", "auc_interval", "roc_curve",
           "tpr_at_fpr", "attack_metrics", "random_guess", "split_halves", "membership_report", "plot_roc", "member_split"]
