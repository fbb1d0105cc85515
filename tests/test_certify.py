"""trustdiff.certify on cases with known answers: a linear classifier's exact certified radius, a
constant classifier's maximal radius, the abstain boundary from the binomial tail, fresh
estimation draws, the Gaussian oracle behind DenoisedClassifier, and the TSV/metrics/shard files."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import beta, binom, binomtest, norm
from torch import nn

from trustdiff.certify import (DenoisedClassifier, Smooth, certify_set, lower_confidence_bound, max_radius,
                               min_count_to_certify, model_sigma, report, select_indices)
from trustdiff.train.classifier import (classifier_config, classifier_loss_fn, load_classifier, save_classifier,
                                        train_classifier)
from trustdiff.certify.evaluate import Row
from trustdiff.diffusion import DiffusersDenoiser, GaussianDenoiser, ddpm_alphas_cumprod
from trustdiff.errors import CheckpointError, InputError
from trustdiff.nets import SmallCNN
from trustdiff.persist import write_manifest


# --- base classifiers with known behaviour -------------------------------------------------------

class Linear2(nn.Module):
    """f(x) = 1 if w·x + c > 0 else 0: under N(0, σ²I) noise P(f = 1) = Φ((w·x + c)/(σ‖w‖)), so
    the smoothed classifier's exact radius is the distance (w·x + c)/‖w‖ to the boundary."""

    def __init__(self, w, c):
        super().__init__()
        self.w, self.c = torch.as_tensor(w, dtype=torch.float64), float(c)

    def forward(self, x):
        s = x.flatten(1).double() @ self.w + self.c
        return torch.stack([torch.zeros_like(s), s], 1)


class Scripted(nn.Module):
    """Returns the classes of a fixed script, in call order, and records every input it sees."""

    def __init__(self, classes, K):
        super().__init__()
        self.classes, self.K, self.pos, self.seen = list(classes), K, 0, []

    def forward(self, x):
        b = x.shape[0]
        c = torch.tensor(self.classes[self.pos: self.pos + b])
        self.pos += b
        self.seen.append(x.detach().clone())
        return F.one_hot(c, self.K).float()


def constant(K=3, c=0):
    return lambda x: F.one_hot(torch.full((x.shape[0],), c), K).float()


def linear_case(R_true=0.2):
    x = torch.full((1, 1, 4), 0.5)
    w = torch.tensor([1.0, -2.0, 0.5, 2.0], dtype=torch.float64)
    c = R_true * float(w.norm()) - float(w @ x.flatten().double())
    return x, Linear2(w, c)


# --- Smooth: statistics with exact answers --------------------------------------------------------

@pytest.mark.parametrize("n,alpha,sigma", [(100, 0.001, 0.25), (10_000, 0.001, 0.5), (37, 0.05, 0.12)])
def test_constant_classifier_gets_the_maximal_radius(n, alpha, sigma):
    s = Smooth(constant(), 3, sigma)
    c, r = s.certify(torch.rand(1, 4, 4), 10, n, alpha, 64, generator=torch.Generator().manual_seed(0))
    assert c == 0
    assert r == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-12, abs=1e-12)
    assert r == max_radius(sigma, n, alpha)


@pytest.mark.parametrize("n,alpha", [(100, 0.001), (1000, 0.001), (10_000, 0.001), (50, 0.05), (7, 0.01), (5, 0.01)])
def test_abstain_boundary_matches_the_binomial_tail(n, alpha):
    # the Clopper–Pearson bound reaches 1/2 iff P(Binom(n, 1/2) >= nA) <= alpha
    exact = next((k for k in range(1, n + 1) if binom.sf(k - 1, n, 0.5) <= alpha), None)
    assert min_count_to_certify(n, alpha) == exact
    if exact is None:
        return
    sigma, n0 = 0.25, 5
    for nA, certifies in ((exact - 1, False), (exact, True)):
        f = Scripted([0] * n0 + [0] * nA + [1] * (n - nA), 2)
        c, r = Smooth(f, 2, sigma).certify(torch.rand(1, 2, 2), n0, n, alpha, 1000)
        if certifies:
            assert c == 0 and r == pytest.approx(sigma * norm.ppf(beta.ppf(alpha, nA, n - nA + 1)), rel=1e-12)
        else:
            assert (c, r) == (Smooth.ABSTAIN, 0.0)


def test_lower_confidence_bound_is_clopper_pearson():
    assert lower_confidence_bound(0, 10, 0.05) == 0.0
    assert lower_confidence_bound(7, 10, 0.05) == pytest.approx(beta.ppf(0.05, 7, 4), rel=1e-14)
    assert lower_confidence_bound(10, 10, 0.05) == pytest.approx(0.05 ** 0.1, rel=1e-12)


def test_linear_classifier_certificates_exceed_the_true_radius_at_most_alpha_of_the_time():
    """Over many seeds the rate of wrong certificates (a radius above the exact one, or another
    class) agrees with the exact binomial computation, which is itself <= alpha."""
    R_true, sigma, n0, n, alpha, seeds = 0.2, 0.25, 10, 100, 0.05, 600
    x, f = linear_case(R_true)
    pA = norm.cdf(R_true / sigma)
    k = np.arange(1, n + 1)
    over = beta.ppf(alpha, k, n - k + 1) > pA             # counts whose bound overstates p_A
    exact = float(binom.pmf(k[over], n, pA).sum())        # P(radius > R_true | class 1 selected)
    assert exact <= alpha
    s = Smooth(f, 2, sigma)
    fails = 0
    for seed in range(seeds):
        c, r = s.certify(x, n0, n, alpha, n, generator=torch.Generator().manual_seed(seed))
        fails += (c == 0) or (c == 1 and r > R_true)
    # the selection step picks class 0 with probability ~1e-2, and then almost never certifies
    lo, hi = binom.ppf(1e-4, seeds, exact), binom.ppf(1 - 1e-4, seeds, exact + 1e-3)
    assert lo <= fails <= hi, (fails, exact * seeds)
    assert fails / seeds <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / seeds)


def test_linear_classifier_mean_radius_is_close_to_the_truth_at_large_n():
    R_true, sigma, n, alpha, seeds = 0.3, 0.25, 100_000, 0.001, 6
    x, f = linear_case(R_true)
    pA = norm.cdf(R_true / sigma)
    radii = [Smooth(f, 2, sigma).certify(x, 100, n, alpha, n, generator=torch.Generator().manual_seed(s))
             for s in range(seeds)]
    assert all(c == 1 for c, _ in radii)
    mean = np.mean([r for _, r in radii])
    # the exact law of the returned radius, from Binomial(n, p_A)
    k = np.arange(int(n * pA - 8 * math.sqrt(n)), int(n * pA + 8 * math.sqrt(n)))
    w = binom.pmf(k, n, pA)
    rk = sigma * norm.ppf(beta.ppf(alpha, k, n - k + 1))
    expect, sd = float((w * rk).sum()), float(np.sqrt((w * (rk - (w * rk).sum()) ** 2).sum()))
    assert abs(mean - expect) < 4 * sd / math.sqrt(seeds)
    assert R_true - 0.01 < mean < R_true


def test_selection_and_estimation_draws_are_fresh():
    n0, n = 7, 23
    f = Scripted([1] * n0 + [0] * n, 2)        # selection says 1, the fresh draws all say 0
    x = torch.full((1, 4, 4), 0.5)
    c, r = Smooth(f, 2, 0.25).certify(x, n0, n, 0.01, 5, generator=torch.Generator().manual_seed(0))
    assert (c, r) == (Smooth.ABSTAIN, 0.0)     # n_A counted on the estimation draws only
    noise = torch.cat(f.seen).flatten(1) - x.flatten()
    assert noise.shape[0] == n0 + n
    assert torch.unique(noise, dim=0).shape[0] == n0 + n   # no draw reused within or across phases
    assert abs(float(noise.std()) - 0.25) < 0.03


def test_same_generator_seed_gives_the_same_certificate_and_batching_does_not_matter():
    x, f = linear_case(0.1)
    s = Smooth(f, 2, 0.5)
    a = s.certify(x, 20, 300, 0.01, 300, generator=torch.Generator().manual_seed(3))
    b = s.certify(x, 20, 300, 0.01, 300, generator=torch.Generator().manual_seed(3))
    assert a == b


def test_predict_abstains_unless_the_binomial_test_separates_the_top_two():
    x = torch.rand(1, 2, 2)
    n, alpha = 100, 0.05
    for nA in range(56, 66):
        f = Scripted([1] * nA + [0] * (n - nA), 2)
        expected = 1 if binomtest(nA, n, 0.5).pvalue <= alpha else Smooth.ABSTAIN
        assert Smooth(f, 2, 0.25).predict(x, n, alpha, 30) == expected
    # the runner-up, not the rest, is the comparison: 40 vs 35 (of 100) cannot be separated
    f = Scripted([1] * 40 + [2] * 35 + [0] * 25, 3)
    assert Smooth(f, 3, 0.25).predict(x, n, 0.01, 100) == Smooth.ABSTAIN
    f = Scripted([2] * 60 + [0] * 30 + [1] * 10, 3)
    assert Smooth(f, 3, 0.25).predict(x, n, 0.01, 100) == 2
    f = Scripted([0] * 50 + [1] * 50, 2)
    assert Smooth(f, 2, 0.25).predict(x, n, 0.5, 100) == Smooth.ABSTAIN


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("make", [
    lambda: Smooth(constant(), 3, 0.0),
    lambda: Smooth(constant(), 3, -0.25),
    lambda: Smooth(constant(), 3, float("nan")),
    lambda: Smooth(constant(), 1, 0.25),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(1, 4, 4), 0, 10, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(1, 4, 4), 10, 0, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(1, 4, 4), 10, 10, 0.0, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(1, 4, 4), 10, 10, 1.0, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(1, 4, 4), 10, 10, 0.01, 0),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(1, 4, 4), 10.5, 10, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(2, 1, 4, 4), 10, 10, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(1, 4, 4) + 1.5, 10, 10, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.rand(1, 4, 4) - 1.0, 10, 10, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(np.zeros((1, 4, 4)), 10, 10, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).certify(torch.zeros(1, 4, 4, dtype=torch.uint8), 10, 10, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).predict(torch.rand(1, 4, 4), 0, 0.01, 10),
    lambda: Smooth(constant(), 3, 0.25).predict(torch.rand(1, 4, 4), 10, 2.0, 10),
    lambda: Smooth(constant(K=4), 3, 0.25).certify(torch.rand(1, 4, 4), 10, 10, 0.01, 10),
])
def test_bad_input_is_one_input_error(make):
    with pytest.raises(InputError) as e:
        make()
    _one_line(e)


# --- DenoisedClassifier ---------------------------------------------------------------------------

def test_denoised_classifier_with_the_gaussian_oracle_equals_the_closed_form():
    mu, s, sigma = 0.1, 0.4, 0.25
    den = GaussianDenoiser(mu, s)
    x = (0.5 + 0.3 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    out = DenoisedClassifier(den, nn.Flatten(), sigma)(x)
    sm = 2 * sigma                              # model units
    x0 = mu + s**2 / (s**2 + sm**2) * (2 * x - 1 - mu)
    assert torch.allclose(out, ((x0 + 1) / 2).clamp(0, 1).flatten(1), atol=1e-6)


def test_multistep_denoise_follows_the_probability_flow_ode_of_the_gaussian():
    mu, s, sigma = -0.2, 0.3, 0.25
    den = GaussianDenoiser(mu, s)
    x = 0.5 + 0.25 * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sm = 2 * sigma
    ode = mu + s / math.sqrt(s**2 + sm**2) * (2 * x - 1 - mu)     # the exact ODE transport to σ = 0
    target = ((ode + 1) / 2).clamp(0, 1)
    err = {k: float((DenoisedClassifier(den, nn.Flatten(), sigma, steps=k).denoise(x) - target).abs().max())
           for k in (24, 48)}
    assert err[24] < 2e-3 and err[48] < 0.3 * err[24]      # Heun: second order in the step count
    one = DenoisedClassifier(den, nn.Flatten(), sigma, steps=1).levels()
    assert one.tolist() == [sm, 0.0]


class EpsZero(nn.Module):
    """A backbone predicting ε = 0 (so D(x) = x) that records the timesteps it is given."""

    def __init__(self):
        super().__init__()
        self.t = []

    def forward(self, x, t, cond=None):
        self.t.append(t.detach().clone())
        return torch.zeros_like(x)


def test_discrete_time_noise_level_is_never_less_than_asked():
    den = DiffusersDenoiser(EpsZero(), ddpm_alphas_cumprod())
    table = den.sigmas
    for sigma in (0.003, 0.01, 0.05, 0.12, 0.25, 0.5, 1.0, 4.0):
        sm = model_sigma(den, sigma)
        t = int(torch.searchsorted(table, torch.tensor(sm, dtype=torch.float64)))
        assert sm >= 2 * sigma
        assert sm == pytest.approx(float(table[t]), rel=1e-12)     # a training step's σ_t ...
        assert t == 0 or float(table[t - 1]) < 2 * sigma            # ... the first one that suffices
    f = DenoisedClassifier(den, nn.Flatten(), 0.25)
    f(torch.rand(2, 1, 4, 4))
    t_used = den.unet.t[-1]
    t_star = int(den.timestep_at_least(0.5))
    assert torch.allclose(t_used.double(), torch.full_like(t_used.double(), t_star), atol=1e-3)
    with pytest.raises(InputError) as e:
        DenoisedClassifier(den, nn.Flatten(), 1000.0)
    _one_line(e)


def test_continuous_denoiser_gets_twice_the_pixel_sigma():
    assert model_sigma(GaussianDenoiser(0.0, 0.5), 0.12) == 0.24


def test_gradients_flow_through_the_denoised_classifier():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    for steps in (1, 3):
        f = DenoisedClassifier(GaussianDenoiser(0.0, 0.5), clf, 0.25, steps=steps)
        x = (0.5 + 0.05 * torch.randn(2, 1, 4, 4, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(f, (x,))
        f(x).sum().backward()
        assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("kw", [dict(sigma=0.0), dict(sigma=-1.0), dict(sigma=0.25, steps=0),
                                dict(sigma=0.25, steps=2, sampler="ddpm")])
def test_denoised_classifier_bad_input(kw):
    with pytest.raises(InputError) as e:
        DenoisedClassifier(GaussianDenoiser(0.0, 0.5), nn.Flatten(), **kw)
    _one_line(e)


def test_smoothing_a_denoised_classifier_certifies():
    """End to end on the Gaussian oracle: a linear classifier behind the denoiser, smoothed."""
    x, lin = linear_case(0.3)
    f = DenoisedClassifier(GaussianDenoiser(0.0, 1.0), lin, 0.12)
    c, r = Smooth(f, 2, 0.12).certify(x, 20, 500, 0.001, 250, generator=torch.Generator().manual_seed(0))
    assert c == 1 and r > 0


# --- base classifiers -----------------------------------------------------------------------------

def test_noise_augmentation_draws_from_the_loops_generator():
    seen = []

    def net(x):
        seen.append(x)
        return torch.zeros(x.shape[0], 2)

    x, y = torch.full((4, 1, 8, 8), 0.5), torch.zeros(4, dtype=torch.long)
    classifier_loss_fn(0.0)(net, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(seen[-1], x)
    for seed in (0, 0, 1):
        classifier_loss_fn(0.25)(net, x, y, torch.Generator().manual_seed(seed))
    assert torch.equal(seen[-3], seen[-2]) and not torch.equal(seen[-2], seen[-1])
    assert abs(float((seen[-1] - x).std()) - 0.25) < 0.05
    assert classifier_loss_fn(0.25)(net, x, y, torch.Generator()).shape == (4,)


def test_train_classifier_saves_a_folder_that_loads_back(tmp_path):
    from trustdiff.data import load

    x, y = load("digits", resolution=8, split="train").tensors()
    net = train_classifier(x[:64], y[:64], run_dir=tmp_path / "run", noise_sigma=0.25, steps=2, batch_size=16,
                           width=4, progress=False, data="digits")
    cfg = classifier_config(tmp_path / "run")
    assert cfg["arch"] == "small-cnn" and cfg["noise_sigma"] == 0.25 and cfg["width"] == 4 and cfg["data"] == "digits"
    back = load_classifier(tmp_path / "run")
    assert torch.equal(back(x[:5]), net(x[:5]))
    path = tmp_path / "run" / "classifier" / "config.json"
    path.write_text(json.dumps({**cfg, "width": 8}))
    with pytest.raises(CheckpointError) as e:                # the manifest notices the edit
        load_classifier(tmp_path / "run")
    assert "config.json is truncated or altered" in _one_line(e)
    write_manifest(path.parent)                              # sealed again: the architecture check
    with pytest.raises(CheckpointError) as e:
        load_classifier(tmp_path / "run")
    assert "different architecture" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        load_classifier(tmp_path / "nowhere")
    _one_line(e)


# --- the TSV, metrics and shards ------------------------------------------------------------------

ROWS = [Row(0, 3, 3, 0.61, 1, 0.5), Row(1, 2, -1, 0.0, 0, 0.4), Row(2, 5, 5, 0.2, 1, 0.3), Row(3, 1, 7, 0.9, 0, 0.2)]


def test_tsv_round_trip_and_certified_accuracy(tmp_path):
    report.write_tsv(tmp_path / "a.tsv", ROWS)
    assert (tmp_path / "a.tsv").read_text().splitlines()[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert report.read_tsv(tmp_path / "a.tsv") == ROWS
    acc = report.certified_accuracy(ROWS, (0.0, 0.2, 0.25, 0.61, 0.7))
    assert acc == {0.0: 0.5, 0.2: 0.5, 0.25: 0.25, 0.61: 0.25, 0.7: 0.0}
    m = report.finalize(tmp_path, ROWS, dict(sigma=0.25, n=1000, n0=100, alpha=0.001))
    assert m["certified_accuracy"] == {"0": 0.5, "0.25": 0.25, "0.5": 0.25, "0.75": 0.0, "1": 0.0}
    assert m["n"] == 1000 and m["max_certifiable_radius"] == pytest.approx(max_radius(0.25, 1000, 0.001))
    assert json.loads((tmp_path / "metrics.json").read_text())["abstain_rate"] == 0.25
    assert (tmp_path / "certify-curve.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n1\t2\n")
    with pytest.raises(InputError) as e:
        report.read_tsv(tmp_path / "bad.tsv")
    _one_line(e)


def test_shards_merge_into_the_unsharded_run():
    x, f = linear_case(0.2)
    xs = torch.stack([x, x.clamp(0, 0.45), x * 0.9, x.flip(-1), 1 - x])
    ys = torch.tensor([1, 1, 0, 1, 0])
    s = Smooth(f, 2, 0.25)
    kw = dict(n0=10, n=200, alpha=0.01, batch_size=64, seed=5)
    whole = certify_set(s, xs, ys, select_indices(5), **kw)
    parts = [certify_set(s, xs, ys, select_indices(5, shard=(i, 2)), **kw) for i in range(2)]
    key = lambda r: (r.idx, r.label, r.predict, r.radius, r.correct)  # noqa: E731
    assert sorted(map(key, parts[0] + parts[1])) == list(map(key, whole))
    assert select_indices(10, skip=3, max_index=7) == [0, 3, 6]
    assert select_indices(10, skip=3, shard=(1, 2)) == [3, 9]


# --- the CLI --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_main():
    from trustdiff.cli import cli, main
    from trustdiff.cli.certify import COMMANDS

    for cmd in COMMANDS:                       # idempotent with the registration in trustdiff.cli
        cli.add_command(cmd)
    return main


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clf") / "classifier"
    torch.manual_seed(0)
    save_classifier(folder, SmallCNN(1, 10, width=4, resolution=8), data="digits", split_seed=0)
    return folder


def _err(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_cli_certify_sharded_and_merged_equals_one_run(cli_main, tiny_classifier, tmp_path, capsys):
    common = ["certify", "--classifier", str(tiny_classifier), "--sigma", "0.25", "--draws0", "10", "--draws", "40",
              "--alpha", "0.01", "--batch", "20", "--max", "5", "--device", "cpu"]
    assert cli_main([*common, "--out", str(tmp_path / "one")]) == 0
    for i in range(2):
        assert cli_main([*common, "--shard", f"{i}/2", "--out", str(tmp_path / "two")]) == 0
    assert not (tmp_path / "two" / "certify.tsv").exists()
    assert cli_main(["certify-merge", str(tmp_path / "two")]) == 0
    one, two = (report.read_tsv(tmp_path / d / "certify.tsv") for d in ("one", "two"))
    assert len(one) == 5 and [r.idx for r in one] == list(range(5))
    assert [(r.idx, r.predict, r.radius) for r in one] == [(r.idx, r.predict, r.radius) for r in two]
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m1["certified_accuracy"] == m2["certified_accuracy"] and m1["n"] == 40
    assert not list((tmp_path / "one").glob("*.partial"))
    # a missing shard, a bad shard spec, a bad sigma: one line each, and no run folder
    capsys.readouterr()                        # drop the progress bars
    (tmp_path / "two" / "certify-shard-1-of-2.json").unlink()
    _err(capsys, cli_main(["certify-merge", str(tmp_path / "two")]))
    for bad in (["--shard", "2/2"], ["--sigma", "0"], ["--alpha", "1.5"], ["--draws", "0"]):
        args = [*common, *bad, "--out", str(tmp_path / "never")]
        _err(capsys, cli_main(args))
        assert not (tmp_path / "never").exists()


def test_cli_certify_behind_a_denoiser(cli_main, tiny_classifier, tmp_path):
    from trustdiff.diffusion.model import ModelSpec, build_denoiser, save_model

    spec = ModelSpec(size="tiny", resolution=8, channels=1)
    torch.manual_seed(0)
    unet, _ = build_denoiser(spec)
    save_model(tmp_path / "model", unet, spec)
    args = ["certify", "--classifier", str(tiny_classifier), "--denoiser", str(tmp_path / "model"), "--sigma", "0.5",
            "--draws0", "4", "--draws", "8", "--alpha", "0.1", "--batch", "8", "--max", "2", "--device", "cpu",
            "--out", str(tmp_path / "run")]
    assert cli_main(args) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["num_images"] == 2 and m["settings"]["denoiser"] == str(tmp_path / "model")


def test_counts_are_those_of_x_plus_sigma_times_fresh_draws_at_every_batch_size():
    """The counting loop draws each batch into one reused buffer, in place: the counts must be
    exactly those of x + σ·randn(...) drawn batch by batch from the same generator, and x untouched."""
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))
    f = Linear2(w, 0.1)
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1))
    x_before = x.clone()
    sigma, num = 0.5, 103
    for b in (1, 10, 64, 500):
        g = torch.Generator().manual_seed(3)
        naive = torch.zeros(2, dtype=torch.long)
        for lo in range(0, num, b):
            k = min(b, num - lo)
            noise = torch.randn((k, *x.shape), generator=g)
            naive += torch.bincount(f(x + sigma * noise).argmax(1), minlength=2)
        got = Smooth(f, 2, sigma).counts(x, num, b, generator=torch.Generator().manual_seed(3))
        assert torch.equal(got, naive) and 0 < int(got[1]) < num
    assert torch.equal(x, x_before)
