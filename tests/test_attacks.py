"""Attacks: PGD against closed forms on a linear model, projection invariants, BPDA, AutoAttack
and torchattacks cross-checks, and soundness checks that fire on planted faults."""

import pytest
import torch
from torch import nn

from trustdiff.attacks import (BPDA, Attack, autoattack, evaluate, margin, pgd, pgd_attack, project, to_markdown,
                               torchattacks_pgd)
from trustdiff.errors import InputError

D = 16


class Linear(nn.Module):
    """Two-class linear model on 1×4×4 images: logits (w·x, −w·x)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([s, -s], 1)


def _lin():
    w = torch.randn(D, generator=torch.Generator().manual_seed(0))
    x = 0.3 + 0.4 * torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))   # interior
    return Linear(w), w, x, torch.zeros(5, dtype=torch.long)


def test_linf_pgd_reaches_the_ball_corner_along_the_gradient_sign():
    model, w, x, y = _lin()
    x_adv = pgd(model, x, y, eps=0.05, alpha=0.01, steps=20, norm="linf", random_start=False)
    # CE on class 0 rises as w·x falls: the optimum is δ = −ε·sign(w)
    torch.testing.assert_close((x_adv - x).flatten(1), -0.05 * w.sign().expand(5, D), atol=1e-6, rtol=0)


def test_l2_pgd_reaches_the_sphere_along_the_gradient():
    model, w, x, y = _lin()
    x_adv = pgd(model, x, y, eps=0.2, alpha=0.05, steps=20, norm="l2", random_start=True,
                generator=torch.Generator().manual_seed(0))
    d = (x_adv - x).flatten(1)
    torch.testing.assert_close(d.norm(dim=1), torch.full((5,), 0.2), atol=1e-5, rtol=0)
    cos = (d @ -w) / (d.norm(dim=1) * w.norm())
    assert cos.min() > 0.999


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_and_range_invariants(norm):
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(8, 1, 4, 4, generator=g)
    p = project(delta, 0.3, norm)
    size = p.flatten(1).abs().amax(1) if norm == "linf" else p.flatten(1).norm(dim=1)
    assert (size <= 0.3 + 1e-6).all()
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 3))
    x = torch.rand(8, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    x_adv = pgd(model, x, y, eps=0.3, alpha=0.1, steps=5, norm=norm, restarts=2, generator=g)
    d = (x_adv - x).flatten(1)
    assert ((d.abs().amax(1) if norm == "linf" else d.norm(dim=1)) <= 0.3 + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(pgd(model, x, y, eps=0.0, alpha=0.1, steps=5, norm=norm), x)


def test_cw_kl_and_targeted_losses_do_what_they_say():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 4))
    x = torch.rand(16, 1, 4, 4)
    y = model(x).argmax(1)
    target = (y + 1) % 4
    x_t = pgd(model, x, target, eps=1.0, alpha=0.1, steps=50, targeted=True, random_start=False)
    assert (model(x_t).argmax(1) == target).float().mean() > 0.9
    x_cw = pgd(model, x, y, eps=0.5, alpha=0.05, steps=30, loss="cw", random_start=False)
    assert (margin(model(x_cw), y) < margin(model(x), y)).all()
    x_kl = pgd(model, x, y, eps=0.1, alpha=0.02, steps=10, loss="kl", random_start=True)
    p0, p1 = model(x).log_softmax(1), model(x_kl).log_softmax(1)
    assert (torch.nn.functional.kl_div(p1, p0, log_target=True, reduction="none").sum(1) > 1e-4).all()


def _trained_mlp():
    """A small MLP that separates four Gaussian blobs of 4×4 images (brightness 0.2 … 0.8)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (128,), generator=g)
    x = (0.2 + 0.2 * y[:, None, None, None].float() + 0.05 * torch.randn(128, 1, 4, 4, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.requires_grad_(False), x[:64], y[:64]


def test_our_pgd_agrees_with_torchattacks():
    net, x, y = _trained_mlp()
    torch.manual_seed(0)
    ours = (net(pgd(net, x, y, eps=0.1, alpha=0.01, steps=30)).argmax(1) == y).float().mean()
    theirs = (net(torchattacks_pgd(net, x, y, eps=0.1, alpha=0.01, steps=30)).argmax(1) == y).float().mean()
    assert abs(ours - theirs) <= 0.05


def test_autoattack_adapter_respects_the_budget():
    net, x, y = _trained_mlp()
    x_adv = autoattack(net, x[:16], y[:16], eps=0.1, norm="linf", version="standard")
    assert (x_adv - x[:16]).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (net(x_adv).argmax(1) == y[:16]).sum() <= (net(x[:16]).argmax(1) == y[:16]).sum()


def test_bpda_forward_is_the_transform_and_backward_the_approximation():
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    out = BPDA(lambda v: torch.round(v * 4) / 4)(x)
    torch.testing.assert_close(out, torch.round(x * 4) / 4)
    (out * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))


def _failed(report):
    return {c["name"].split(" ")[0] for c in report["checks"] if not c["passed"]}


def test_sound_evaluation_passes_every_check():
    net, x, y = _trained_mlp()
    rep = evaluate(net, x[:32], y[:32], [pgd_attack(0.1, "linf", 20), pgd_attack(0.3, "l2", 20)], n_check=16)
    assert rep["reliable"], rep["unreliable_reasons"]
    assert rep["worst_case"]["value"] <= min(a["robust"]["value"] for a in rep["attacks"])
    assert rep["worst_case"]["lo"] <= rep["worst_case"]["value"] <= rep["worst_case"]["hi"]
    assert "Verdict: reliable" in to_markdown(rep)
    # which examples: the outcome strings are the rates' own k, nested as the scoring says
    clean, worst = rep["clean_examples"], rep["worst_case_examples"]
    assert len(clean) == 32 and clean.count("1") == rep["clean"]["k"] and worst.count("1") == rep["worst_case"]["k"]
    for a in rep["attacks"]:
        r = a["robust_examples"]
        assert r.count("1") == a["robust"]["k"]
        assert all(c >= w and c >= v for c, v, w in zip(clean, r, worst))      # robust ⊆ clean, worst ⊆ robust
    unchecked = evaluate(net, x[:32], y[:32], [pgd_attack(0.1, "linf", 20)], checks=False)
    assert unchecked["reliable"] is None and "not run" in unchecked["unreliable_reasons"][0]
    assert unchecked["attacks"][0]["robust_examples"] == rep["attacks"][0]["robust_examples"]   # same seed, same points


class Quantized(nn.Module):
    """Gradient masking: the input is rounded (and detached) before the network."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((torch.round(x * 8) / 8).detach())


class Noisy(nn.Module):
    """A randomized defense: Gaussian noise on the input at every call."""

    def __init__(self, net, s=0.3):
        super().__init__()
        self.net, self.s = net, s

    def forward(self, x):
        return self.net(x + self.s * torch.randn_like(x))


def test_checks_fire_on_zero_gradients():
    net, x, y = _trained_mlp()
    rep = evaluate(Quantized(net), x[:16], y[:16], [pgd_attack(0.1, "linf", 10)], n_check=16)
    assert not rep["reliable"] and "gradients" in _failed(rep)


def test_checks_fire_on_a_randomized_model_attacked_without_eot():
    net, x, y = _trained_mlp()
    rep = evaluate(Noisy(net), x[:16], y[:16], [pgd_attack(0.1, "linf", 10, eot=1)], n_check=16)
    assert rep["randomized"] and "randomness" in _failed(rep)
    rep = evaluate(Noisy(net), x[:16], y[:16], [pgd_attack(0.1, "linf", 10, eot=4)], n_check=16)
    assert "randomness" not in _failed(rep)


def test_stacked_eot_passes_give_the_one_at_a_time_gradient():
    from trustdiff.attacks.pgd import input_gradient

    net, x, y = _trained_mlp()
    x, y = x[:5], y[:5]                          # 5 images of 16 values each
    one = input_gradient(net, x, y, eot=6, eot_batch=1)
    for k in (2, 4, 6):                          # a deterministic model: the same gradient, summed in another order
        g, l = input_gradient(net, x, y, eot=6, eot_batch=k)
        torch.testing.assert_close(g, one[0])
        torch.testing.assert_close(l, one[1])
    # a randomized model: the k copies draw their noise at once, which on the CPU generator is the
    # same stream as k draws one after the other, so even the noise (and so the gradient) agrees
    grads = []
    for k in (1, 3):
        torch.manual_seed(7)
        grads.append(input_gradient(Noisy(net), x, y, eot=6, eot_batch=k)[0])
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(InputError, match="eot_batch"):
        input_gradient(net, x, y, eot=2, eot_batch=0)
    adv = pgd(Noisy(net), x, y, eps=0.1, alpha=0.02, steps=3, eot=4, eot_batch=4)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_checks_fire_on_an_attack_that_has_not_converged():
    net, x, y = _trained_mlp()
    # the planted fault: 40 steps of 0.0015 cover 0.06 of the 0.2 budget, 80 steps 0.12 — past the
    # half-gap (0.1) between the classes, so twice the steps break far more
    weak = pgd_attack(0.2, "linf", 40, alpha=0.0015)
    a = evaluate(net, x[:32], y[:32], [weak], checks=False)["attacks"][0]["robust"]["value"]
    b = evaluate(net, x[:32], y[:32], [pgd_attack(0.2, "linf", 80, alpha=0.0015)], checks=False)["attacks"][0]["robust"]["value"]
    assert b < a - 0.1                                                        # the fault is real
    rep = evaluate(net, x[:32], y[:32], [weak], n_check=32)
    assert "convergence" in _failed(rep)


def test_an_attack_without_rerun_checks_lists_them_as_skipped_and_never_reruns_it():
    net, x, y = _trained_mlp()
    runs = []

    class Counted(Attack):
        def run(self, model, x, y, generator=None):
            runs.append(self.eps)
            return super().run(model, x, y, generator)

    once = Counted("pgd", 0.1, "linf", 10, rerun_checks=False)
    rep = evaluate(net, x[:16], y[:16], [once], n_check=16)
    assert runs == [0.1, 0.0]                        # the attack, then ε = 0 (free); no ε/2, 2× steps, ∞
    skipped = {c["name"].split(" ")[0] for c in rep["checks"] if c.get("skipped")}
    assert skipped == {"monotone", "convergence", "unbounded"}
    assert rep["reliable"] and "3 skipped" in to_markdown(rep) and "SKIPPED monotone" in to_markdown(rep)


@pytest.mark.parametrize("kw,msg", [(dict(norm="l1"), "norm"), (dict(eps=-0.1), "eps"), (dict(loss="hinge"), "loss")])
def test_bad_arguments_are_one_line_errors(kw, msg):
    model, _, x, y = _lin()
    args = dict(eps=0.1, alpha=0.01, steps=2) | kw
    with pytest.raises(InputError, match=msg) as e:
        pgd(model, x, y, **args)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="y"):
        pgd(model, x, y[:3], eps=0.1, alpha=0.01, steps=2)
