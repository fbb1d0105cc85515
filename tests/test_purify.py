"""DiffPure: closed-form oracles for a Gaussian data distribution, gradients, randomness, errors."""
import math

import pytest
import torch

from trustdiff.diffusion import GaussianDenoiser
from trustdiff.errors import InputError
from trustdiff.purify import PurifiedClassifier, nfe, purification_sigmas, purify, sigma_star

MU, S = 0.0, 0.1          # data N(μ, s²) per pixel, model units: pixels 0.5 ± 0.05 (never clamped)


def _stats(solver, steps, u, t_star=0.1, n=400):
    """Mean and std of the purified pixels (model units) of a constant image at model value u."""
    den = GaussianDenoiser(MU, S)
    x = torch.full((n, 1, 4, 4), (u + 1) / 2)
    g = torch.Generator().manual_seed(0)
    out = purify(x, den, t_star, solver=solver, steps=steps, generator=g) * 2 - 1
    return out.mean().item(), out.std().item()


@pytest.mark.parametrize("solver", ["sde", "ddpm"])
def test_reverse_sde_samples_the_gaussian_posterior(solver):
    # the exact reverse SDE from x_t = u + σε draws x₀ ~ p(x₀ | x_t): mean μ + a(u − μ), a = s²/(s² + σ²),
    # total variance a²σ² + s²σ²/(s² + σ²)
    u, sig = 0.6, sigma_star(0.1)
    a = S**2 / (S**2 + sig**2)
    mean, std = _stats(solver, 100, u)
    assert mean == pytest.approx(MU + a * (u - MU), abs=0.005)
    assert std == pytest.approx(math.sqrt(a**2 * sig**2 + S**2 * sig**2 / (S**2 + sig**2)), rel=0.05)


@pytest.mark.parametrize("solver,steps", [("ode", 20), ("euler", 200), ("ddim", 200)])
def test_probability_flow_ode_is_the_gaussian_transport_map(solver, steps):
    # the PF ODE maps x_t to μ + b(x_t − μ), b = s/√(s² + σ²): mean μ + b(u − μ), std b·σ
    u, sig = 0.6, sigma_star(0.1)
    b = S / math.sqrt(S**2 + sig**2)
    mean, std = _stats(solver, steps, u)
    assert mean == pytest.approx(MU + b * (u - MU), abs=0.005)
    assert std == pytest.approx(b * sig, rel=0.05)


def test_small_t_star_is_nearly_the_identity_and_grids_end_at_zero():
    den = GaussianDenoiser(MU, 0.5)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    out = purify(x, den, 1e-3, solver="ode", steps=4, generator=torch.Generator().manual_seed(0))
    assert (out - x).abs().max() < 5 * sigma_star(1e-3) / 2    # within 5 pixel-unit σ* of the input
    for solver in ("sde", "ddpm", "ode", "euler", "ddim"):
        s = purification_sigmas(0.2, 7, solver)
        assert s.shape == (8,) and s[-1] == 0 and torch.all(s[:-1] > s[1:])
        assert s[0].item() == pytest.approx(sigma_star(0.2), rel=1e-6)
    assert nfe("ode", 5) == 9 and nfe("sde", 10) == 10


def _tiny_model():
    from trustdiff.diffusion import Preconditioned
    from trustdiff.nets import SmallCNN, build_unet

    torch.manual_seed(0)
    den = Preconditioned(build_unet("tiny", resolution=8, channels=1), "edm")
    clf = SmallCNN(in_channels=1, num_classes=3, width=4, resolution=8)
    return den, clf


def test_purified_classifier_is_differentiable_and_checkpointing_keeps_the_gradient():
    den, clf = _tiny_model()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    grads = []
    for ckpt in (False, True):
        f = PurifiedClassifier(clf, den, 0.1, solver="sde", steps=3, checkpoint=ckpt,
                               generator=torch.Generator().manual_seed(5))
        xi = x.clone().requires_grad_(True)
        f(xi)[:, 0].sum().backward()
        grads.append(xi.grad)
    assert grads[0].abs().sum() > 0 and torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1])


def test_purification_is_randomized_and_reproducible_from_a_seed():
    den, clf = _tiny_model()
    x = torch.rand(2, 1, 8, 8)
    f = PurifiedClassifier(clf, den, 0.2, steps=2)
    with torch.no_grad():
        assert not torch.equal(f.purify(x), f.purify(x))          # fresh noise on every call
        a = purify(x, den, 0.2, steps=2, generator=torch.Generator().manual_seed(3))
        b = purify(x, den, 0.2, steps=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("kw,msg", [
    (dict(t_star=0.0), "t_star"), (dict(t_star=1.5), "t_star"), (dict(solver="rk4"), "solver"),
    (dict(steps=0), "steps"),
])
def test_bad_arguments_are_one_line_errors(kw, msg):
    den = GaussianDenoiser(MU, S)
    args = dict(t_star=0.1, solver="sde", steps=3) | kw
    with pytest.raises(InputError, match=msg) as e:
        purify(torch.rand(1, 1, 4, 4), den, args.pop("t_star"), **args)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="x"):
        purify(torch.rand(1, 1, 4, 4) * 3, den, 0.1)


def _saved_bytes(f, x) -> int:
    """Bytes the autograd graph of f(x) keeps for the backward pass (every saved tensor)."""
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        f(x.clone().requires_grad_(True))
    return sum(total)


def test_checkpointing_a_frozen_denoiser_keeps_the_gradient_and_stores_only_its_inputs():
    den, clf = _tiny_model()
    den.requires_grad_(False)                     # an attack's case: the input gradient only
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    grads, saved = [], {}
    for ckpt in (False, True):
        f = PurifiedClassifier(clf, den, 0.1, solver="sde", steps=3, checkpoint=ckpt,
                               generator=torch.Generator().manual_seed(5))
        xi = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(f(xi)[:, 0].sum(), xi)[0])
    torch.testing.assert_close(grads[0], grads[1])
    for steps in (2, 12):
        f = PurifiedClassifier(clf, den, 0.1, solver="sde", steps=steps, checkpoint=True)
        saved[steps] = _saved_bytes(f, x)
    # ten more solver steps keep at most ten more inputs of x's size (and their scalars' few bytes)
    assert saved[12] - saved[2] <= 10 * x.numel() * x.element_size() + 1024
    stored = _saved_bytes(PurifiedClassifier(clf, den, 0.1, solver="sde", steps=12), x)
    assert stored > 5 * saved[12]                  # without checkpointing every network's activations stay
