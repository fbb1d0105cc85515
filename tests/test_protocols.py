"""Evaluation protocols for randomized defenses on a model whose randomness is a known coin:
exact one-evaluation, worst-of-N and fixed-randomness answers; PGD's most-fooled iterate; the
majority vote and one-shot denoising of the purifier."""
import pytest
import torch
from torch import nn

from trustdiff.attacks import FixedRandomness, evaluate, evaluations, pgd, pgd_attack, score, to_markdown
from trustdiff.errors import InputError
from trustdiff.metrics import bounded_mean

LEVELS = {"always": 0.9, "coin": 0.5, "never": 0.1}     # pixel (0, 0) of an image → P(correct) 1, ½, 0


class Coin(nn.Module):
    """Two classes, label 0. Image i is classified correctly iff u < p(x), u ~ U(0, 1) drawn per
    call and image from ``generator`` (one, a list of one per image, or torch's global RNG); p(x)
    is 1, ½ or 0 by the band of pixel (0, 0), which an ε ≤ 0.1 attack cannot leave. A small term
    in Σx gives the attacker a gradient that moves nothing."""

    def __init__(self):
        super().__init__()
        self.generator = None

    def draws(self, n):
        g = self.generator
        if isinstance(g, list):
            return torch.cat([torch.rand(1, generator=gi) for gi in g])
        return torch.rand(n, generator=g)

    def forward(self, x):
        v = x[:, 0, 0, 0].detach()
        p = torch.where(v > 0.75, 1.0, torch.where(v > 0.25, 0.5, 0.0))
        a = torch.where(self.draws(len(x)) < p, 5.0, -5.0) + 1e-3 * x.flatten(1).sum(1)
        return torch.stack([a, -a], 1)


def _coin_data(n_each=(20, 40, 12)):
    x = torch.full((sum(n_each), 1, 4, 4), 0.5)
    v = torch.cat([torch.full((k,), v) for k, v in zip(n_each, LEVELS.values())])
    x[:, 0, 0, 0] = v[torch.randperm(len(v), generator=torch.Generator().manual_seed(0))]     # kinds mixed
    return x, torch.zeros(len(x), dtype=torch.long)


def _u(seed):
    """The first draw of a generator seeded `seed`: what every image's coin shows under fixed randomness."""
    return torch.rand(1, generator=torch.Generator().manual_seed(seed)).item()


def test_worst_of_n_and_expected_are_exact_on_the_coin():
    torch.manual_seed(0)
    x, y = _coin_data()                                     # 20 always right, 40 coins, 12 never
    atk = pgd_attack(0.05, "linf", 3, eot=4)
    rep = evaluate(Coin(), x, y, [atk], n_evals=20, n_check=16)
    row = rep["attacks"][0]
    assert rep["randomized"] and rep["n_evals"] == 20
    # a coin example survives 20 passes with probability 2^-20: worst of 20 is exactly the 20 sure ones
    assert row["worst_of_n"]["k"] == 20 and rep["worst_case_of_n"]["k"] == 20 and rep["clean_of_n"]["k"] == 20
    # one evaluation: the 20 sure ones plus the coins that came up right (clean and adversarial pass both)
    assert 20 <= row["robust"]["k"] <= 60 and row["worst_of_n"]["value"] <= row["robust"]["value"]
    # expected accuracy over passes: (20 + 40 · ¼ [clean ½ × pass ½]) / 72 lies in its Hoeffding interval
    e = row["expected"]
    assert e["method"] == "hoeffding" and e["lo"] <= (20 + 40 * 0.25) / 72 <= e["hi"]
    assert rep["reliable"], rep["unreliable_reasons"]
    assert "protocols" in {c["name"] for c in rep["checks"]}
    md = to_markdown(rep)
    assert "worst of 20" in md and "expected over 20" in md


def test_one_evaluation_is_worst_of_one_and_the_first_of_n():
    x, y = _coin_data()
    atk = pgd_attack(0.05, "linf", 2, eot=2)
    torch.manual_seed(3)
    one = evaluate(Coin(), x, y, [atk], checks=False)
    torch.manual_seed(3)
    many = evaluate(Coin(), x, y, [atk], checks=False, n_evals=5)
    # the same draws up to the adversarial pass: N passes begin with the one-evaluation pass
    assert many["clean"] == one["clean"] and many["attacks"][0]["robust"] == one["attacks"][0]["robust"]
    assert "n_evals" not in one and "worst_of_n" not in one["attacks"][0]
    clean = torch.tensor([True, True, False, True])
    evals = torch.tensor([[True, False, True, True]])
    s = score(clean, evals)
    assert s["one"] == s["worst_of_n"] and s["one"]["k"] == 2 and s["expected"]["value"] == 0.5
    s = score(clean, torch.cat([evals, torch.tensor([[True, True, True, False]])]))
    assert (s["one"]["k"], s["worst_of_n"]["k"], s["expected"]["value"]) == (2, 1, 0.5)   # per example: 1, ½, 0, ½


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_fixed_randomness_is_the_coin_every_image_shows_under_the_known_seed(seed):
    x, y = _coin_data()
    model = Coin()
    fixed = FixedRandomness(model, seed)
    with torch.no_grad():
        assert torch.equal(fixed(x), fixed(x)) and torch.equal(fixed(x[:30]), fixed(x)[:30])   # deterministic, batch-free
    assert model.generator is None                         # the defense's own RNG is left as it was
    rep = evaluate(model, x, y, [pgd_attack(0.05, "linf", 3, eot=4)], fixed=True, seed=seed, n_check=16)
    f = rep["fixed"]
    heads = _u(seed) < 0.5                                 # the one draw every coin image gets
    assert not f["randomized"] and f["attacks"][0]["eot"] == 1
    assert f["clean"]["k"] == f["attacks"][0]["robust"]["k"] == 20 + (40 if heads else 0)
    assert f["worst_case"]["k"] == 20 + (40 if heads else 0)
    assert rep["reliable"], rep["unreliable_reasons"]
    assert "Fixed randomness" in to_markdown(rep)


def test_the_known_seeds_cover_both_coin_faces():
    # the parametrised seeds above test both outcomes of the fixed draw, not one twice
    assert {_u(s) < 0.5 for s in (0, 1, 2, 5)} == {True, False}


def test_deterministic_models_get_the_same_figure_under_every_protocol():
    w = torch.randn(16, generator=torch.Generator().manual_seed(0))

    class Lin(nn.Module):
        def forward(self, x):
            s = x.flatten(1) @ w
            return torch.stack([s, -s], 1)

    x = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = (Lin()(x).argmax(1))
    rep = evaluate(Lin(), x, y, [pgd_attack(0.02, "linf", 10)], n_evals=4, fixed=True, n_check=8)
    row = rep["attacks"][0]
    assert row["worst_of_n"] == row["robust"] and row["expected"]["value"] == row["robust"]["value"]
    assert rep["fixed"] is None and "deterministic" in rep["fixed_note"]
    with pytest.raises(InputError, match="generator"):
        FixedRandomness(Lin(), 0)
    with pytest.raises(InputError, match="n_evals"):
        evaluations(Lin(), x, y, 0)


class Band(nn.Module):
    """Label 0; fooled iff the mean pixel m is in (0.32, 0.38); the loss rises with m everywhere,
    so PGD's sign steps walk m upward through the band and out of it."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        inside = ((m > 0.32) & (m < 0.38)).detach()
        a = torch.where(inside, -2.0, 2.0) - 0.01 * m
        return torch.stack([a, -a], 1)


def test_most_fooled_keeps_the_iterate_that_fooled_the_model_not_the_last():
    x = torch.full((3, 1, 4, 4), 0.25)
    y = torch.zeros(3, dtype=torch.long)
    kw = dict(eps=0.3, alpha=0.05, steps=6, random_start=False)
    last = pgd(Band(), x, y, **kw)
    best = pgd(Band(), x, y, select="most_fooled", **kw)
    assert last.mean().item() == pytest.approx(0.55) and Band()(last).argmax(1).eq(0).all()    # walked out
    assert best.mean().item() == pytest.approx(0.35) and Band()(best).argmax(1).eq(1).all()    # the fooling iterate
    # nothing fools a model that is never wrong: most_fooled returns the last iterate, like last
    never = pgd(Band(), x, y, eps=0.05, alpha=0.01, steps=3, random_start=False, select="most_fooled")
    torch.testing.assert_close(never, pgd(Band(), x, y, eps=0.05, alpha=0.01, steps=3, random_start=False))
    with pytest.raises(InputError, match="select"):
        pgd(Band(), x, y, select="best", **kw)


def test_bounded_mean_is_hoeffding():
    m = bounded_mean(torch.tensor([0.0, 1.0] * 50))
    assert m["value"] == 0.5 and m["n"] == 100
    assert m["hi"] - 0.5 == pytest.approx((torch.log(torch.tensor(40.0)) / 200).sqrt().item())
    with pytest.raises(InputError, match="bounded_mean"):
        bounded_mean(torch.tensor([1.5]))


# --- the purifier: majority vote and one-shot denoising --------------------------------------------

def _tiny():
    from trustdiff.diffusion import Preconditioned
    from trustdiff.nets import SmallCNN, build_unet

    torch.manual_seed(0)
    return (Preconditioned(build_unet("tiny", resolution=8, channels=1), "edm"),
            SmallCNN(in_channels=1, num_classes=3, width=4, resolution=8))


def test_vote_averages_probabilities_over_the_stacked_purifications():
    from trustdiff.purify import vote

    z = torch.randn(3 * 5, 4, generator=torch.Generator().manual_seed(0))
    want = z.softmax(1).reshape(3, 5, 4).mean(0).log()
    torch.testing.assert_close(vote(z, 3), want)
    torch.testing.assert_close(vote(z[:5], 1), z[:5].log_softmax(1))


def test_a_voting_purifier_is_differentiable_costs_k_times_and_is_fixed_by_fixed_randomness():
    from trustdiff.purify import PurifiedClassifier

    den, clf = _tiny()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    f = PurifiedClassifier(clf, den, 0.1, steps=2, votes=4)
    assert f.config["nfe"] == 4 * PurifiedClassifier(clf, den, 0.1, steps=2).config["nfe"]
    xi = x.clone().requires_grad_(True)
    out = f(xi)
    assert out.shape == (3, 3) and torch.allclose(out.exp().sum(1), torch.ones(3))
    out[:, 0].sum().backward()
    assert xi.grad.abs().sum() > 0 and torch.isfinite(xi.grad).all()
    fixed = FixedRandomness(f, 7)
    with torch.no_grad():
        a, b = fixed(x), fixed(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(fixed(x[:1]), a[:1])            # per image, whatever the batch
        # the K votes of an image are K different draws from its generator, not one draw K times
        # (which would make the vote the single purification's prediction)
        single = FixedRandomness(PurifiedClassifier(clf, den, 0.1, steps=2), 7)(x).log_softmax(1)
        assert (a - single).abs().max() > 1e-4
    with pytest.raises(InputError, match="votes"):
        PurifiedClassifier(clf, den, 0.1, votes=0)


@pytest.mark.parametrize("solver", ["sde", "ddpm", "ode", "euler", "ddim"])
def test_one_step_purification_is_one_shot_denoising(solver):
    from trustdiff.images import clamp_pixel, to_model, to_pixel
    from trustdiff.purify import purify, sigma_star

    den, _ = _tiny()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = purify(x, den, 0.1, solver=solver, steps=1, generator=torch.Generator().manual_seed(4))
        s = sigma_star(0.1)
        noisy = to_model(x) + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
        want = clamp_pixel(to_pixel(den(noisy, s)))
    torch.testing.assert_close(got, want)
