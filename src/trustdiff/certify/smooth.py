"""Randomized smoothing: Cohen, Rosenfeld & Kolter, *Certified Adversarial Robustness via
Randomized Smoothing* (ICML 2019), PREDICT and CERTIFY (their Section 3.2 pseudocode).

The smoothed classifier is g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I), with x and σ in
[0, 1]-pixel units. Theorem 1 with p̄_B = 1 − p̲_A: if P(f(x + δ) = c_A) ≥ p̲_A > ½, then
g(x + ε) = c_A for every ‖ε‖₂ < R = σ·Φ⁻¹(p̲_A). CERTIFY estimates p̲_A from samples, so the
guarantee holds with probability ≥ 1 − α over the noise.

The base classifier f is any callable N×C×H×W → logits N×K. Noise is added in pixel space and
not clamped, exactly as in the reference code (normalization is the classifier's first layer).
"""
from __future__ import annotations

import math
import numbers

import torch
from scipy.stats import beta, binomtest, norm

from ..errors import InputError
from ..images import check_images


# --- the statistics: one small function per formula ---------------------------------------------

def lower_confidence_bound(nA: int, n: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower bound on p_A from nA of n draws: the α quantile
    of Beta(nA, n − nA + 1), and 0 when nA = 0. For every true p_A, P(bound > p_A) ≤ α."""
    if nA == 0:
        return 0.0
    return float(beta.ppf(alpha, nA, n - nA + 1))


def certified_radius(pA_lower: float, sigma: float) -> float:
    """R = σ·Φ⁻¹(p̲_A) (Cohen et al. Theorem 1 with p̄_B = 1 − p̲_A)."""
    return sigma * float(norm.ppf(pA_lower))


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with n draws, reached when all n agree: the lower
    bound at nA = n is α^(1/n), so R_max = σ·Φ⁻¹(α^(1/n)). It grows with n: state n beside
    every certified-accuracy figure."""
    return certified_radius(alpha ** (1.0 / n), sigma)


def min_count_to_certify(n: int, alpha: float) -> int | None:
    """The abstain boundary: the least nA whose lower bound reaches ½ (CERTIFY abstains for any
    smaller count), or None when even nA = n does not. The bound is increasing in nA, so a
    bisection over 1..n finds it."""
    if lower_confidence_bound(n, n, alpha) < 0.5:
        return None
    lo, hi = 1, n                      # invariant: bound(hi) >= 1/2
    while lo < hi:
        mid = (lo + hi) // 2
        if lower_confidence_bound(mid, n, alpha) >= 0.5:
            hi = mid
        else:
            lo = mid + 1
    return hi


# --- argument checks: each bad input is one line ------------------------------------------------

def _check_count(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {v!r}")
    return int(v)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise InputError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    return float(alpha)


def check_sigma(sigma) -> float:
    """σ as a float; InputError unless it is a finite number > 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma: expected a finite noise level > 0 (in [0, 1]-pixel units), got {sigma!r}")
    return float(sigma)


def _check_image(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x: expected a torch.Tensor C×H×W in [0, 1], got {type(x).__name__}")
    if x.ndim != 3:
        raise InputError(f"x: expected a single image C×H×W (rank 3), got shape {tuple(x.shape)}")
    check_images(x.unsqueeze(0), name="x", channels=x.shape[0])
    return x


def check_certify_arguments(n0: int, n: int, alpha: float, batch_size: int) -> None:
    """Raise InputError unless n0, n, batch_size are integers >= 1 and alpha is in (0, 1)."""
    _check_count("n0", n0)
    _check_count("n", n)
    _check_alpha(alpha)
    _check_count("batch_size", batch_size)


class Smooth:
    """A smoothed classifier g around a base classifier f, with Cohen et al.'s API.

    Args:
        base_classifier: f, pixel-space N×C×H×W → logits N×K (an ``nn.Module`` or any callable).
        num_classes: K >= 2.
        sigma: σ > 0 of the Gaussian noise, in [0, 1]-pixel units.
    """

    #: returned in place of a class when the test cannot decide
    ABSTAIN = -1

    def __init__(self, base_classifier, num_classes: int, sigma: float):
        self.base_classifier = base_classifier
        self.num_classes = _check_count("num_classes", num_classes, 2)
        self.sigma = check_sigma(sigma)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> tuple[int, float]:
        """CERTIFY: ĉ_A from n0 selection draws; then n *fresh* draws count n_A; p̲_A is the
        one-sided Clopper–Pearson bound at level α.

        Returns:
            ``(ĉ_A, σ·Φ⁻¹(p̲_A))``, or ``(ABSTAIN, 0.0)`` when p̲_A < ½.

        Guarantee: with probability at least 1 − α over the noise, when the class returned is
        not ABSTAIN, the smoothed classifier g predicts it at every x + ε with ‖ε‖₂ below the
        returned radius.

        Args:
            x: one image C×H×W in [0, 1]; device and dtype of the noise follow it.
            generator: the noise's ``torch.Generator`` (on x's device); None uses the global RNG.
        """
        _check_image(x)
        check_certify_arguments(n0, n, alpha, batch_size)
        counts_selection = self._sample_noise(x, n0, batch_size, generator)
        cAHat = int(counts_selection.argmax())
        counts_estimation = self._sample_noise(x, n, batch_size, generator)   # fresh draws
        nA = int(counts_estimation[cAHat])
        pABar = lower_confidence_bound(nA, n, alpha)
        if pABar < 0.5:
            return self.ABSTAIN, 0.0
        return cAHat, certified_radius(pABar, self.sigma)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> int:
        """PREDICT: the top class of n draws, or ABSTAIN when a two-sided binomial test of its
        count n_A against the runner-up's n_B (H₀: p = ½ on n_A + n_B trials) has p-value > α.

        Guarantee (Hung et al. 2019, via Cohen et al. Prop. 1): the probability of returning a
        class other than g(x) is at most α.
        """
        _check_image(x)
        _check_count("n", n)
        _check_alpha(alpha)
        _check_count("batch_size", batch_size)
        counts = self._sample_noise(x, n, batch_size, generator)
        order = torch.sort(counts, descending=True, stable=True).indices
        nA, nB = int(counts[order[0]]), int(counts[order[1]])
        if binomtest(nA, nA + nB, 0.5).pvalue > alpha:
            return self.ABSTAIN
        return int(order[0])

    def counts(self, x: torch.Tensor, num: int, batch_size: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The class counts of ``num`` noisy copies of x: int64 [K] on the CPU (validated
        public form of :meth:`_sample_noise`)."""
        _check_image(x)
        _check_count("num", num)
        _check_count("batch_size", batch_size)
        return self._sample_noise(x, num, batch_size, generator)

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """counts[c] = #{i ≤ num : f(x + δ_i) = c}, δ_i ~ N(0, σ²I) i.i.d., drawn
        ``batch_size`` at a time from ``generator``. Counting needs no gradients (it returns
        integers), so it runs under ``torch.inference_mode``; each batch's noise is drawn into one
        preallocated buffer and turned into x + σ·δ in place (the same values as
        ``x + σ * randn(...)``, without two fresh image-sized tensors per batch), and the classes
        are tallied with one ``torch.bincount`` per batch, with no host sync until the end."""
        if generator is not None and generator.device.type != x.device.type:
            raise InputError(f"generator: expected a torch.Generator on {x.device}, got one on {generator.device}")
        K = self.num_classes
        counts = torch.zeros(K, dtype=torch.long, device=x.device)
        with torch.inference_mode():
            buf = torch.empty((min(batch_size, num), *x.shape), device=x.device, dtype=x.dtype)
            remaining = num
            while remaining > 0:
                b = min(batch_size, remaining)
                noisy = buf[:b]
                torch.randn(noisy.shape, generator=generator, device=x.device, dtype=x.dtype, out=noisy)
                noisy.mul_(self.sigma).add_(x)                                            # x + σ·δ, b×C×H×W
                logits = self.base_classifier(noisy)                                      # b×K
                if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (b, K):
                    got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                    raise InputError(f"base_classifier: expected logits of shape ({b}, {K}), got {got}")
                counts += torch.bincount(logits.argmax(dim=1), minlength=K)
                remaining -= b
        return counts.cpu()
