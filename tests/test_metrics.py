"""Exact intervals and per-image fidelity against closed forms."""

import pytest
import torch
from scipy.stats import binom

from trustdiff.errors import InputError
from trustdiff.metrics import clopper_pearson, proportion, psnr, ssim


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
