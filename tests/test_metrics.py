"""Exact intervals and per-image fidelity against closed forms."""

import pytest
import torch
from scipy.stats import binom

from trustdiff.errors import InputError
from trustdiff.metrics import clopper_pearson, holm, mcnemar, outcome_bits, proportion, psnr, ssim


def test_clopper_pearson_closed_forms_and_definition():
    # k = 0: upper end 1 − (α/2)^(1/n); k = n: lower end (α/2)^(1/n)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** 0.1))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** 0.1), 1.0)
    # in between: the ends are where the binomial tails equal α/2
    lo, hi = clopper_pearson(7, 20)
    assert binom.sf(6, 20, lo) == pytest.approx(0.025) and binom.cdf(7, 20, hi) == pytest.approx(0.025)
    p = proportion(7, 20)
    assert p["value"] == 0.35 and p["lo"] == lo and p["hi"] == hi and p["n"] == 20
    with pytest.raises(InputError, match="k <= n"):
        clopper_pearson(5, 4)


def test_psnr_and_ssim_closed_forms():
    x = torch.full((2, 1, 16, 16), 0.5)
    y = x + torch.tensor([0.1, 0.01]).reshape(2, 1, 1, 1)          # MSE 1e-2 and 1e-4
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 40.0]))
    assert torch.isinf(psnr(x, x)).all()
    z = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(z, z), torch.ones(3))
    noisy = (z + 0.2 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(z, noisy) < 0.9).all()
    with pytest.raises(InputError, match="same shape"):
        psnr(x, z[:1])


def test_rank_correlation_is_spearman_with_an_exact_permutation_p_value():
    from scipy.stats import spearmanr

    from trustdiff.metrics import rank_correlation

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (7,), generator=g).double()             # ties, averaged as scipy does
    b = torch.rand(7, generator=g).double()
    r = rank_correlation(a, b)
    assert r["rho"] == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic)
    assert r["lo"] <= r["rho"] <= r["hi"]
    # four rows in exactly reversed order: ρ = −1, reached (in |ρ|) by 2 of the 4! = 24 pairings
    r = rank_correlation([1, 2, 3, 4], [0.9, 0.8, 0.7, 0.6])
    assert r["rho"] == -1 and r["p_exact"] == pytest.approx(2 / 24) and r["lo"] is None
    assert rank_correlation([1, 2, 3], [1, 3, 2])["lo"] is None       # n = 3: no Fisher interval
    with pytest.raises(InputError, match="rank_correlation"):
        rank_correlation([1, 2], [1])


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs():
    # 20 examples: both right on 8, both wrong on 2, only a on 8, only b on 2
    a = torch.tensor([True] * 8 + [False] * 2 + [True] * 8 + [False] * 2)
    b = torch.tensor([True] * 8 + [False] * 2 + [False] * 8 + [True] * 2)
    r = mcnemar(a, b)
    assert (r["n"], r["n10"], r["n01"]) == (20, 8, 2) and r["difference"] == pytest.approx(0.3)
    # two-sided: P(X <= 2) + P(X >= 8) for X ~ Binomial(10, 1/2) = 2 · 56/1024
    assert r["p_exact"] == pytest.approx(2 * 56 / 1024)
    assert mcnemar(outcome_bits(a), outcome_bits(b)) == r                   # the report's strings give the same
    swapped = mcnemar(b, a)
    assert (swapped["n10"], swapped["n01"], swapped["p_exact"]) == (2, 8, r["p_exact"])
    # concordant examples do not matter; no discordant pair: p = 1
    assert mcnemar(a, a)["p_exact"] == 1.0 and mcnemar(a, a)["difference"] == 0.0
    assert mcnemar(torch.cat([a, torch.ones(100, dtype=torch.bool)]), torch.cat([b, torch.ones(100, dtype=torch.bool)]))["p_exact"] \
        == pytest.approx(r["p_exact"])
    # pairing separates what two unpaired intervals cannot: 90 vs 82 of 100, the 8 discordant all one way
    x = torch.arange(100) < 90
    y = x & (torch.arange(100) >= 8)
    pa, pb = proportion(int(x.sum()), 100), proportion(int(y.sum()), 100)
    assert pb["k"] == 82 and pa["lo"] <= pb["hi"] and mcnemar(x, y)["p_exact"] == pytest.approx(2 * 0.5 ** 8)
    assert outcome_bits(torch.tensor([True, False, True])) == "101"
    with pytest.raises(InputError, match="same n"):
        mcnemar(a, b[:5])
    with pytest.raises(InputError, match="only '0' and '1'"):
        mcnemar("0102", "0101")
    with pytest.raises(InputError, match="bool"):
        outcome_bits(torch.tensor([1, 0]))


def test_holm_adjusts_step_down_in_the_input_order():
    # sorted 0.01, 0.02, 0.04 with m = 3: 0.03, max(0.03, 0.04), max(0.04, 0.04) = 0.04
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])                 # capped at 1
    assert holm([0.003]) == [0.003]                                       # one test: unchanged
    adj = holm([0.001, 0.2, 0.03, 0.6])
    assert all(q >= p for p, q in zip([0.001, 0.2, 0.03, 0.6], adj))
    with pytest.raises(InputError, match="p-values"):
        holm([0.1, 1.5])
