"""The diffusion core against closed-form oracles: a Gaussian and a two-component Gaussian
mixture, whose ideal denoisers are exact."""
import math

import pytest
import torch
from torch import nn

from trustdiff.diffusion import (
    ClassifierFreeGuidance, ClassifierGuidance, DiffusersDenoiser, GaussianDenoiser,
    GaussianMixtureDenoiser, Preconditioned, ddpm_alphas_cumprod, denoising_loss, edm_loss,
    geometric_sigmas, karras_sigmas, samplers, schedules,
)
from trustdiff.diffusion.precond import as_sigma

MU, S = 0.3, 0.5


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- schedules --------------------------------------------------------------------------------

def test_karras_sigmas_endpoints_and_order():
    s = karras_sigmas(18, 0.002, 80.0)
    assert s.shape == (19,)
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    assert bool((s[:-1] > s[1:]).all())
    # evenly spaced in sigma^(1/rho)
    r = s[:-1].double() ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[1] - r[0]).expand(17), atol=1e-5)
    assert karras_sigmas(1, 0.1, 10.0).tolist() == pytest.approx([10.0, 0.0])


def test_time_sigma_maps_round_trip():
    t = torch.linspace(1e-3, 1, 50, dtype=torch.float64)
    assert torch.allclose(schedules.vp_t(schedules.vp_sigma(t)), t, atol=1e-10)
    assert torch.allclose(schedules.ve_t(schedules.ve_sigma(t)), t, atol=1e-12)
    sig = torch.logspace(-3, 2, 50, dtype=torch.float64)
    assert torch.allclose(schedules.alpha_bar_to_sigma(schedules.sigma_to_alpha_bar(sig)), sig, rtol=1e-9)
    # VP: 1/(1+sigma^2) is alpha_bar = exp(-int beta), with beta linear from 0.1 to 20
    ab = schedules.sigma_to_alpha_bar(schedules.vp_sigma(t))
    assert torch.allclose(ab, torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2)), rtol=1e-9)
    assert schedules.vp_beta(1.0) == pytest.approx(20.0)


def test_vp_sampling_levels():
    s = schedules.vp_sigmas(10)
    assert s[0].item() == pytest.approx(float(schedules.vp_sigma(1.0)), rel=1e-6) and s[-1] == 0


# --- the diffusers adapter: alpha_bar <-> sigma --------------------------------------------

class _OracleUNet(nn.Module):
    """A fake discrete-time network: given x_t = sqrt(ab)*x and a fractional timestep, returns the
    exact eps (or v, or x0) of the Gaussian oracle, read off the adapter's own schedule."""

    def __init__(self, adapter_ref, oracle, kind):
        super().__init__()
        self.ref, self.oracle, self.kind = [adapter_ref], oracle, kind

    def forward(self, x_t, t, cond=None):
        sigma = self.ref[0].t_to_sigma(t).to(x_t.dtype)
        alpha = (1 / (1 + sigma**2).sqrt()).reshape(-1, 1, 1, 1)
        x = x_t / alpha
        x0 = self.oracle(x, sigma)
        eps = (x - x0) / sigma.reshape(-1, 1, 1, 1)
        if self.kind == "epsilon":
            return eps
        if self.kind == "v_prediction":
            s_vp = alpha * sigma.reshape(-1, 1, 1, 1)
            return alpha * eps - s_vp * x0
        return x0


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_diffusers_adapter_reproduces_oracle(kind):
    oracle = GaussianDenoiser(MU, S)
    ab = ddpm_alphas_cumprod(1000)
    den = DiffusersDenoiser(nn.Identity(), ab, kind)
    den.unet = _OracleUNet(den, oracle, kind)
    x = oracle.sample((8, 1, 4, 4), generator=_gen(), sigma=1.0).double()
    for sigma in [0.02, 0.3, 1.0, 5.0, 50.0]:
        assert torch.allclose(den(x, sigma), oracle(x, sigma), atol=1e-6), (kind, sigma)


def test_diffusers_adapter_sigma_t_round_trip():
    den = DiffusersDenoiser(nn.Identity(), ddpm_alphas_cumprod(1000))
    t = torch.linspace(0, 999, 301, dtype=torch.float64)
    assert torch.allclose(den.sigma_to_t(den.t_to_sigma(t)), t, atol=1e-6)
    table = schedules.alpha_bar_to_sigma(ddpm_alphas_cumprod(1000))
    assert torch.allclose(den.t_to_sigma(torch.arange(1000.0)), table, rtol=1e-9)
    sig = torch.tensor([0.02, 0.25, 0.5, 1.0, 2.0])
    t_hi = den.timestep_at_least(sig)
    assert bool((table[t_hi] >= sig.double()).all()) and bool((table[t_hi - 1] < sig.double()).all())
    with pytest.raises(ValueError):
        den.timestep_at_least(1e6)


def test_diffusers_folder_loads_as_denoiser(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    den = DiffusersDenoiser.from_pretrained(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    out = den(x, 0.7)
    assert out.shape == x.shape and torch.isfinite(out).all()
    from trustdiff.errors import CheckpointError
    with pytest.raises(CheckpointError):
        DiffusersDenoiser.from_pretrained(tmp_path / "nope")


# --- preconditioning agrees with the schedules ---------------------------------------------

class _InversePrecondNet(nn.Module):
    """F such that c_skip x + c_out F(c_in x; c_noise) is exactly the oracle, with σ recovered
    from c_noise alone: checks that c_noise is the paper's invertible map and c_in/c_out fit."""

    def __init__(self, kind, oracle):
        super().__init__()
        self.kind, self.oracle = kind, oracle

    def sigma_of(self, c_noise):
        if self.kind == "edm":
            return (4 * c_noise).exp()
        if self.kind == "vp":
            return schedules.vp_sigma(c_noise.double() / 999).to(c_noise.dtype)
        return 2 * c_noise.exp()

    def forward(self, x_in, c_noise, cond=None):
        sigma = self.sigma_of(c_noise)
        P = Preconditioned(nn.Identity(), self.kind)
        c_skip, c_out, c_in, _ = P.coefficients(sigma)
        b = lambda c: c.reshape(-1, 1, 1, 1)
        x = x_in / b(c_in)
        return (self.oracle(x, sigma) - b(c_skip) * x) / b(c_out)


@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
def test_preconditioning_round_trips_sigma(kind):
    oracle = GaussianDenoiser(MU, S)
    den = Preconditioned(_InversePrecondNet(kind, oracle), kind)
    x = oracle.sample((6, 1, 3, 3), generator=_gen(1), sigma=2.0).double()
    sig = torch.tensor([0.01, 0.1, 0.5, 1, 2, 10], dtype=torch.float64)
    assert torch.allclose(den(x, sig), oracle(x, sig), atol=1e-8)


def test_edm_coefficients_match_table1():
    P = Preconditioned(nn.Identity(), "edm")
    s = torch.tensor([0.5])
    c_skip, c_out, c_in, c_noise = P.coefficients(s)
    assert c_skip.item() == pytest.approx(0.5) and c_out.item() == pytest.approx(0.5 * 0.5 / math.sqrt(0.5))
    assert c_in.item() == pytest.approx(1 / math.sqrt(0.5)) and c_noise.item() == pytest.approx(math.log(0.5) / 4)


# --- losses -------------------------------------------------------------------------------------

def test_denoising_loss_of_oracle_is_the_mmse():
    # E||D*(x0 + sigma n) - x0||^2 per pixel = s^2 sigma^2 / (s^2 + sigma^2) for Gaussian data
    oracle = GaussianDenoiser(MU, S)
    x0 = oracle.sample((4000, 1, 2, 2), generator=_gen(2))
    for sigma in [0.1, 0.5, 2.0]:
        sig = torch.full((4000,), sigma)
        l = denoising_loss(oracle, x0, sig, torch.ones(4000), generator=_gen(3)).mean().item()
        assert l == pytest.approx(S**2 * sigma**2 / (S**2 + sigma**2), rel=0.05)


def test_edm_loss_is_per_sample_and_prefers_the_oracle():
    oracle = GaussianDenoiser(MU, S)
    worse = GaussianDenoiser(MU + 0.2, S)
    x0 = oracle.sample((2000, 1, 2, 2), generator=_gen(4))
    l_star = edm_loss(oracle, x0, generator=_gen(5))
    l_bad = edm_loss(worse, x0, generator=_gen(5))
    assert l_star.shape == (2000,)
    assert l_star.mean() < l_bad.mean()


# --- samplers reproduce the data distribution ---------------------------------------------

SAMPLER_CASES = [
    # name, sampler, sigmas, kwargs, image shape, tolerance on the std
    ("heun", samplers.heun, karras_sigmas(40), {}, (1, 2, 2), 0.02),
    ("heun-churn", samplers.heun, karras_sigmas(60), {"churn": 30}, (1, 2, 2), 0.03),
    ("euler", samplers.euler, karras_sigmas(200), {}, (1, 2, 2), 0.03),
    ("ddim", samplers.ddim, karras_sigmas(200), {}, (1, 2, 2), 0.03),
    ("ddpm_ancestral", samplers.ddpm_ancestral, karras_sigmas(1000), {}, (1, 2, 2), 0.03),
    ("euler_maruyama", samplers.euler_maruyama, karras_sigmas(1000), {}, (1, 2, 2), 0.03),
    ("predictor_corrector", samplers.predictor_corrector, karras_sigmas(200), {}, (1, 8, 8), 0.05),
    ("annealed_langevin", samplers.annealed_langevin, geometric_sigmas(10, 0.01, 1.0),
     {"n_steps_each": 100, "step_lr": 2e-4}, (1, 2, 2), 0.03),
]


@pytest.mark.parametrize("name,fn,sigmas,kw,shape,tol", SAMPLER_CASES, ids=[c[0] for c in SAMPLER_CASES])
def test_sampler_reproduces_gaussian(name, fn, sigmas, kw, shape, tol):
    """4000 samples (16,000 pixels): mean within 0.015 (≈ 5 standard errors) and std within
    ``tol`` relative of the data's N(0.3, 0.5²)."""
    oracle = GaussianDenoiser(MU, S)
    g = _gen(10)
    n = 4000 if shape == (1, 2, 2) else 500
    x = oracle.sample((n, *shape), generator=g, sigma=float(sigmas[0]))
    y = fn(oracle, x, sigmas, generator=g, **kw)
    assert abs(y.mean().item() - MU) < 0.015
    assert y.std().item() == pytest.approx(S, rel=tol)


@pytest.mark.parametrize("name,fn,steps", [("heun", samplers.heun, 40), ("ddpm_ancestral", samplers.ddpm_ancestral, 500),
                                           ("euler_maruyama", samplers.euler_maruyama, 500)])
def test_sampler_reproduces_mixture(name, fn, steps):
    """Two well-separated modes at ±0.6 with weights 0.3/0.7: the fraction of samples in each
    mode (binomial SE ≈ 0.007 at n = 4000), the overall mean and each mode's spread."""
    means = torch.tensor([-0.6, 0.6]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    mix = GaussianMixtureDenoiser(means, [0.1, 0.1], [0.3, 0.7])
    g = _gen(11)
    sigmas = karras_sigmas(steps)
    x = mix.sample(4000, generator=g, sigma=float(sigmas[0]))
    y = fn(mix, x, sigmas, generator=g).flatten(1).mean(1)
    frac_pos = (y > 0).double().mean().item()
    assert frac_pos == pytest.approx(0.7, abs=0.03)
    assert y.mean().item() == pytest.approx(0.3 * -0.6 + 0.7 * 0.6, abs=0.03)
    # per-image mean of 4 pixels of a mode has std 0.1/2
    assert y[y > 0].std().item() == pytest.approx(0.05, rel=0.15)


def test_euler_equals_deterministic_ddim():
    oracle = GaussianDenoiser(MU, S)
    x = oracle.sample((16, 1, 2, 2), generator=_gen(), sigma=80.0)
    sig = karras_sigmas(10)
    assert torch.allclose(samplers.euler(oracle, x, sig), samplers.ddim(oracle, x, sig), atol=1e-5)


def test_same_generator_same_samples():
    oracle = GaussianDenoiser(MU, S)
    x = oracle.sample((8, 1, 2, 2), generator=_gen(), sigma=80.0)
    a = samplers.ddpm_ancestral(oracle, x, karras_sigmas(10), generator=_gen(7))
    b = samplers.ddpm_ancestral(oracle, x, karras_sigmas(10), generator=_gen(7))
    c = samplers.ddpm_ancestral(oracle, x, karras_sigmas(10), generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- gradients ---------------------------------------------------------------------------------

def _tiny_unet(num_class_embeds=None):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, num_class_embeds=num_class_embeds,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


@pytest.mark.parametrize("name", sorted(samplers.SAMPLERS))
def test_gradients_flow_through_every_sampler(name):
    den = Preconditioned(_tiny_unet(), "edm")
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    kw = {"n_steps_each": 2} if name == "langevin" else {}
    sig = karras_sigmas(3, 0.05, 2.0)
    out = samplers.SAMPLERS[name](den, x * 2.0, sig, generator=_gen(), **kw)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = [p.grad for p in den.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


# --- guidance ----------------------------------------------------------------------------------

def test_classifier_free_guidance_scale_0_and_1():
    den = Preconditioned(_tiny_unet(num_class_embeds=11), "edm")
    with torch.no_grad():                     # random class embeddings so cond != uncond
        den.net.class_embedding.weight.normal_(0, 1)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 7, 9])
    null = 10
    D_u, D_c = den(x, 0.8, torch.full_like(y, null)), den(x, 0.8, y)
    assert not torch.allclose(D_u, D_c)
    assert torch.allclose(ClassifierFreeGuidance(den, 0.0, null)(x, 0.8, y), D_u, atol=1e-5)
    assert torch.allclose(ClassifierFreeGuidance(den, 1.0, null)(x, 0.8, y), D_c, atol=1e-5)
    w = 3.0
    assert torch.allclose(ClassifierFreeGuidance(den, w, null)(x, 0.8, y), D_u + w * (D_c - D_u), atol=1e-4)
    # None on a class-conditional net means the null class
    assert torch.allclose(den(x, 0.8), D_u, atol=1e-6)


class _Linear(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.W = nn.Parameter(torch.randn(k, d, generator=_gen(5)))

    def forward(self, x, sigma):
        return x.flatten(1) @ self.W.T


def test_classifier_guidance_matches_closed_form():
    oracle = GaussianDenoiser(MU, S)
    clf = _Linear(4, 3)
    x, y, w, sigma = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1]), 2.0, 0.7
    guided = ClassifierGuidance(oracle, clf, w)(x, sigma, y)
    p = torch.softmax(clf(x, sigma), 1)
    grad = clf.W[y] - p @ clf.W                      # d/dx log softmax_y(Wx)
    expect = oracle(x, sigma) + w * sigma**2 * grad.reshape_as(x)
    assert torch.allclose(guided, expect, atol=1e-5)
    assert torch.allclose(ClassifierGuidance(oracle, clf, 0.0)(x, sigma, y), oracle(x, sigma))


def test_as_sigma_broadcasts():
    x = torch.zeros(3, 1, 2, 2)
    assert as_sigma(0.5, x).shape == (3,) and as_sigma(torch.tensor([1.0, 2, 3]), x).tolist() == [1, 2, 3]


def test_per_sample_generators_make_images_independent_of_batching():
    oracle = GaussianDenoiser(MU, S)
    gens = lambda seeds: [_gen(s) for s in seeds]
    x = torch.zeros(4, 1, 2, 2)
    whole = samplers.ddpm_ancestral(oracle, x, karras_sigmas(5), generator=gens([0, 1, 2, 3]))
    half = samplers.ddpm_ancestral(oracle, x[2:], karras_sigmas(5), generator=gens([2, 3]))
    assert torch.equal(whole[2:], half)


def test_discrete_ddpm_schedule_agrees_with_continuous_vp():
    """DDPM's β_i = 1e-4..0.02 over 1000 steps is the VP SDE's β(t) = 0.1..20 sampled at
    t = i/1000 (Song et al. 2021, Sec. 3.4), so σ_i ≈ σ_VP((i + 1)/1000): within 1% for t in
    [0.05, 0.6], and within 5% everywhere (at the ends the first step's discretisation and
    log(1 − β) ≠ −β show)."""
    sig_discrete = schedules.alpha_bar_to_sigma(ddpm_alphas_cumprod(1000))
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    rel = (sig_discrete / schedules.vp_sigma(t) - 1).abs()
    assert rel[50:600].max() < 0.01 and rel.max() < 0.05
