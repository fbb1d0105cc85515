"""Privacy audit (issue 21): nearest neighbours at scale, Carlini et al.'s extraction criterion,
membership inference (loss attack, PIA) and its metrics — known answers — and the ``audit``
commands on a tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trustdiff.audit import (attack_metrics, auc, auc_interval, brute_force_knn, extraction_report, flagged, knn,
                             loss_at_sigmas, member_split, membership_report, normalized_distance, pia_at_sigmas,
                             prepare_training_set, roc_curve, score_images, tpr_at_fpr)
from trustdiff.cli import main
from trustdiff.data import load
from trustdiff.diffusion.model import ModelSpec, sample
from trustdiff.errors import InputError
from trustdiff.images import to_model


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _digits(split: str, resolution: int = 8):
    return load("digits", resolution=resolution, split=split).tensors()


# ---- nearest neighbours ---------------------------------------------------------------------------

@pytest.mark.parametrize("chunk,query_chunk", [(10_000, 10_000), (64, 1000), (7, 13), (1, 5)])
def test_knn_agrees_with_brute_force_chunked_or_not(chunk, query_chunk):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(150, 20, generator=g), torch.randn(400, 20, generator=g)
    d, i = knn(q, k, 7, chunk=chunk, query_chunk=query_chunk)
    bd, bi = brute_force_knn(q, k, 7)
    assert torch.equal(i, bi)
    assert torch.allclose(d, bd, atol=1e-5)
    assert bool((d[:, 1:] >= d[:, :-1]).all())


def test_knn_finds_exact_copies_at_distance_zero_and_takes_images():
    x, _ = _digits("train")
    q = x[[5, 17, 900]]
    d, i = knn(q, x, 3, chunk=100)                  # N×C×H×W inputs are flattened
    assert i[:, 0].tolist() == [5, 17, 900] and d[:, 0].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(InputError):
        knn(q, x, 0)
    with pytest.raises(InputError):
        knn(q, x[:, :, :4], 1)


# ---- extraction -------------------------------------------------------------------------------------

def test_normalized_criterion_is_scale_invariant():
    g = torch.Generator().manual_seed(1)
    d = torch.rand(20, 50, generator=g).sort(1).values
    assert torch.allclose(normalized_distance(d), normalized_distance(7.5 * d))
    train = torch.rand(300, 1, 6, 6, generator=g)
    gen = (train[:30] + 0.05 * torch.randn(30, 1, 6, 6, generator=g)).clamp(0, 1)
    a = score_images(gen, prepare_training_set(train))
    b = score_images(0.25 * gen, prepare_training_set(0.25 * train))    # the same images, darker
    assert torch.equal(a.index, b.index)
    assert torch.allclose(a.ratio, b.ratio, atol=1e-5)
    assert torch.allclose(4 * b.l2, a.l2, atol=1e-5)                    # ℓ2 itself scales


class NearestOf(torch.nn.Module):
    """A "model" whose denoiser answers the stored image nearest to its input: it samples the
    stored images exactly (model space in, model space out)."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.register_buffer("bank", to_model(images))

    def forward(self, x, sigma, cond=None):
        return self.bank[torch.cdist(x.flatten(1), self.bank.flatten(1)).argmin(1)]


def test_a_model_that_returns_training_images_is_flagged_and_one_returning_heldout_images_is_not():
    tx, ty = _digits("train")
    hx, _ = _digits("test")
    spec = ModelSpec(resolution=8, channels=1)
    ts = prepare_training_set(tx, ty)
    with torch.no_grad():
        copies = sample(NearestOf(tx), spec, range(60), steps=6)
        novel = sample(NearestOf(hx), spec, range(60), steps=6)
    rep, g, h = extraction_report(copies, ts, novel, num_classes=10)
    gen = rep["generated"]["normalized"]
    assert gen["flagged"]["k"] == 60 and rep["generated"]["l2"]["flagged"]["k"] == 60
    distinct = torch.unique(g.index)
    assert gen["distinct_training_images"] == len(distinct) > 1
    assert sum(gen["per_class"].values()) == len(distinct)
    assert gen["per_class"] == {str(c): int((ty[ts.first[distinct]] == c).sum()) for c in range(10)}
    assert float(g.l2.max()) < 1e-5
    # the "held-out" set here is the held-out model's samples: real digits never trained on
    assert rep["heldout"]["normalized"]["flagged"]["k"] == 0 and rep["heldout"]["l2"]["flagged"]["k"] == 0
    assert float(h.ratio.min()) > 0.5


def test_held_out_digits_are_never_flagged_the_baseline():
    tx, _ = _digits("train", 16)
    hx, _ = _digits("test", 16)
    rep, _, h = extraction_report(hx[:100], prepare_training_set(tx), hx)
    assert rep["generated"]["normalized"]["flagged"]["k"] == 0
    assert rep["heldout"]["n"] == len(hx) and rep["heldout"]["exact_copies_in_training_set"] == 0
    assert rep["heldout"]["ratio"]["min"] > 1 / 3


def test_duplicates_are_collapsed_so_a_duplicated_image_counts_once_and_is_still_flagged():
    tx, ty = _digits("train")
    dup = torch.cat([tx[:200], tx[3:4].repeat(10, 1, 1, 1)])          # image 3 ten more times
    ts = prepare_training_set(dup, torch.cat([ty[:200], ty[3:4].repeat(10)]))
    assert ts.keys.shape[0] == 200 and int(ts.copies[3]) == 11 and ts.size == 210
    g = torch.Generator().manual_seed(0)
    near = (tx[3:4] + 0.01 * torch.randn(5, 1, 8, 8, generator=g)).clamp(0, 1)   # five near-copies of it
    s = score_images(near, ts)
    m = flagged(s)["normalized"]
    assert bool(m.all()) and torch.unique(s.index).tolist() == [3]


# ---- membership metrics: known answers ---------------------------------------------------------------

def test_auc_tpr_and_roc_known_answers():
    assert auc([3, 4, 5], [1, 2, 3.5]) == pytest.approx(8 / 9)
    assert auc([1, 2], [1, 2]) == pytest.approx(0.5)                  # ties count ½
    assert auc([0, 0], [0, 0]) == 0.5
    nonm = np.arange(1000.0)                                          # 1000 non-members
    mem = np.array([998.5, 995.5, 989.5, 10.0])                        # above 1, 4, 10 non-members
    r1 = tpr_at_fpr(mem, nonm, 0.01)                                   # ≤ 10 false positives allowed
    assert (r1["tpr"]["k"], r1["fpr"]["k"]) == (3, 10) and not r1["below_resolution"]
    r2 = tpr_at_fpr(mem, nonm, 0.001)                                  # ≤ 1 allowed
    assert (r2["tpr"]["k"], r2["fpr"]["k"]) == (1, 1)
    tied = tpr_at_fpr([5.0], [5.0, 5.0, 1.0], 0.5)                     # a tie never pushes the FPR over
    assert tied["fpr"]["k"] == 0 and tied["tpr"]["k"] == 0
    small = tpr_at_fpr([9.0], np.arange(50.0), 0.001)
    assert small["below_resolution"] and small["fpr"]["k"] == 0
    f, t = roc_curve(mem, nonm)
    assert (f[0], t[0], f[-1], t[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(t, f) == pytest.approx(auc(mem, nonm))


def test_delong_interval_matches_its_definition():
    g = np.random.default_rng(0)
    m, n = g.normal(0.5, 1, 40), g.normal(0, 1, 60)
    psi = (m[:, None] > n[None, :]) + 0.5 * (m[:, None] == n[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    se = np.sqrt(v10.var(ddof=1) / 40 + v01.var(ddof=1) / 60)
    lo, hi = auc_interval(m, n)
    assert (lo + hi) / 2 == pytest.approx(psi.mean()) and hi - lo == pytest.approx(2 * 1.959964 * se, rel=1e-5)


class OffsetLookup(torch.nn.Module):
    """A denoiser that recognises each stored image and answers it plus a known offset c·u: its
    denoising loss at σ is c²·mean(u²)/σ², a known function of the image."""

    def __init__(self, images: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.bank, u = to_model(images), torch.ones_like(images[0])
        self.off = c.reshape(-1, 1, 1, 1) * u

    def forward(self, x, sigma, cond=None):
        j = torch.cdist(x.flatten(1), self.bank.flatten(1)).argmin(1)
        return self.bank[j] + self.off[j]


def test_loss_attack_on_a_model_whose_loss_is_a_known_function_of_membership_gives_the_exact_auc():
    tx, _ = _digits("train")
    members, nonmembers = tx[:10], tx[10:20]
    c = torch.cat([torch.arange(1, 20, 2.0), torch.arange(2, 21, 2.0)]) * 1e-3   # members 1,3,…,19; others 2,…,20
    den = OffsetLookup(torch.cat([members, nonmembers]), c)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    lm = loss_at_sigmas(den, members, [0.01], generator=g(), repeats=2)
    ln = loss_at_sigmas(den, nonmembers, [0.01], generator=g(), repeats=2)
    assert torch.allclose(lm[:, 0], (c[:10] / 0.01) ** 2, rtol=1e-3)
    assert auc(-lm[:, 0], -ln[:, 0]) == pytest.approx(55 / 100)      # Σ_k (11 − k) / 100 pairs
    rep = membership_report({"loss": -lm}, {"loss": -ln}, [0.01])
    assert rep["attacks"]["loss"]["best"]["auc"] == pytest.approx(0.55)
    assert rep["random_guess"]["auc"] == 0.5


def test_loss_noise_is_fixed_shared_by_every_image_and_batch_invariant():
    tx, _ = _digits("train")
    x = tx[:6]
    den = NearestOf(tx[:300])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    full = loss_at_sigmas(den, x, [0.1, 0.5], generator=g(), repeats=3, batch=4)
    one = torch.cat([loss_at_sigmas(den, x[i:i + 1], [0.1, 0.5], generator=g(), repeats=3) for i in range(6)])
    assert torch.allclose(full, one)
    twice = loss_at_sigmas(den, torch.cat([x[:1], x[:1]]), [0.1], generator=g())   # a member and its copy as a non-member
    assert twice[0, 0] == twice[1, 0]


class Ideal(torch.nn.Module):
    """The ideal denoiser of an empirical distribution: E[x₀ | x] over the stored images."""

    def __init__(self, images):
        super().__init__()
        self.bank = to_model(images).flatten(1)

    def forward(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        w = torch.softmax(-torch.cdist(x.flatten(1), self.bank).square() / (2 * s**2), dim=1)
        return (w @ self.bank).view_as(x)


def test_both_attacks_separate_perfectly_on_a_model_that_memorised_its_members():
    tx, _ = _digits("train")
    mem, non = tx[:64], tx[64:128]
    den = Ideal(mem)
    sig = [0.05, 0.2]
    lm = loss_at_sigmas(den, mem, sig, generator=torch.Generator().manual_seed(0))
    ln = loss_at_sigmas(den, non, sig, generator=torch.Generator().manual_seed(0))
    pm, pn = pia_at_sigmas(den, mem, sig, sigma0=0.002), pia_at_sigmas(den, non, sig, sigma0=0.002)
    for j in range(2):
        assert auc(-lm[:, j], -ln[:, j]) == 1.0
        assert auc(-pm[:, j], -pn[:, j]) == 1.0
    m = attack_metrics(-lm[:, 0], -ln[:, 0])
    assert m["tpr_at_fpr"]["0.01"]["tpr"]["value"] == 1.0 and m["tpr_at_fpr"]["0.01"]["below_resolution"]


def test_member_split_is_seeded_disjoint_and_duplicates():
    s = load("digits", resolution=8, split="all")
    a, b, info = member_split(s, 30, seed=1, duplicate=3, times=10)
    a2, _, _ = member_split(s, 30, seed=1, duplicate=3, times=10)
    assert np.array_equal(a.images, a2.images) and len(a.images) == 27 + 30 and len(b.images) == len(s.images) - 30
    assert not set(info["member_indices"]) & set(info["nonmember_indices"])
    assert len({bytes(r) for r in a.images.reshape(len(a.images), -1)}) == 30
    with pytest.raises(InputError):
        member_split(s, len(s.images))


# ---- the commands on a tiny model ------------------------------------------------------------------

def _ok(*argv):
    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("audit")
    _ok("audit", "subset", "-n", "40", "--nonmembers", "80", "--out", d / "subset")
    _ok("train", "--data", d / "subset" / "members.npz", "--resolution", "8", "--size", "tiny", "--steps", "2",
        "--batch", "8", "--checkpoint-every", "2", "--warmup", "1", "--out", d / "m")
    _ok("audit", "extract", "--model", d / "m", "-n", "12", "--sample-steps", "2", "--shard-size", "5",
        "--device", "cpu", "--out", d / "ex")
    _ok("audit", "membership", "--model", d / "m", "--sigmas", "0.1,1", "--repeats", "1", "--device", "cpu",
        "--out", d / "mi")
    return d


def _json(p: Path) -> dict:
    return json.loads(p.read_text())


def test_subset_writes_members_and_nonmembers(tiny):
    m = _json(tiny / "subset" / "metrics.json")
    assert (m["members"], m["nonmembers"]) == (40, 80)
    assert len(np.load(tiny / "subset" / "members.npz")["images"]) == 40


def test_extract_recovers_the_training_set_and_its_nonmembers(tiny):
    m = _json(tiny / "ex" / "metrics.json")
    assert m["training_images"] == 40 and m["generated_images"] == 12 and m["heldout"]["n"] == 80
    assert "members.npz" in m["sets"]["train"] and "non-members" in m["sets"]["heldout"]
    assert m["criterion"]["n_neighbours_used"] == 40 and m["device"] == "cpu"
    assert len(list((tiny / "ex" / "samples").glob("images-*.npz"))) == 3
    for f in ("pairs.png", "distances.png", "grid.png", "neighbours.npz"):
        assert (tiny / "ex" / f).is_file(), f
    nb = np.load(tiny / "ex" / "neighbours.npz")
    assert nb["nearest"].shape == (12,) and nb["nearest"].max() < 40


def test_extract_resumes_from_its_shards(tiny, tmp_path):
    import shutil

    run = tmp_path / "ex"
    shutil.copytree(tiny / "ex", run)
    (run / "metrics.json").unlink()
    first = (run / "samples" / "images-00000.npz").read_bytes()
    _ok("audit", "extract", "--model", tiny / "m", "--resume", "--out", run)
    assert (run / "samples" / "images-00000.npz").read_bytes() == first
    assert _json(run / "metrics.json")["generated"] == _json(tiny / "ex" / "metrics.json")["generated"]


def test_membership_reports_auc_and_low_fpr_tprs_for_both_attacks(tiny):
    m = _json(tiny / "mi" / "metrics.json")
    assert m["sigmas"] == [0.1, 1.0] and set(m["attacks"]) == {"loss", "pia"}
    for a in m["attacks"].values():
        assert len(a["per_sigma"]) == 2
        b = a["best"]
        assert (b["members"], b["nonmembers"]) == (40, 80)
        assert b["auc_interval"][0] <= b["auc"] <= b["auc_interval"][1]
        assert set(b["tpr_at_fpr"]) == {"0.01", "0.001"} and b["tpr_at_fpr"]["0.001"]["below_resolution"]
        assert "selected" in a
    assert (tiny / "mi" / "roc.png").is_file() and (tiny / "mi" / "scores.npz").is_file()


def test_membership_auc_is_one_half_within_its_interval_on_one_distribution(tiny, tmp_path):
    # members and non-members both drawn from the digits never trained on: nothing to find
    non = np.load(tiny / "subset" / "nonmembers.npz")
    np.savez(tmp_path / "a.npz", images=non["images"][:40], labels=non["labels"][:40])
    np.savez(tmp_path / "b.npz", images=non["images"][40:], labels=non["labels"][40:])
    _ok("audit", "membership", "--model", tiny / "m", "--members", tmp_path / "a.npz", "--nonmembers",
        tmp_path / "b.npz", "--sigmas", "0.1,1", "--repeats", "1", "--out", tmp_path / "mi")
    m = _json(tmp_path / "mi" / "metrics.json")
    for a in m["attacks"].values():
        for p in a["per_sigma"]:
            assert p["auc_interval"][0] <= 0.5 <= p["auc_interval"][1], p


def test_dry_run_writes_nothing(tiny, tmp_path, capsys):
    _ok("audit", "membership", "--model", tiny / "m", "--dry-run", "--out", tmp_path / "never")
    _ok("audit", "extract", "--model", tiny / "m", "--dry-run", "--out", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert "audit extract" in capsys.readouterr().out


def test_the_demo_stages_are_ordinary_commands():
    from trustdiff.cli.audit import audit_stages

    for preset in ("smoke", "quick", "full"):
        st = audit_stages(Path("demo"), preset, 0)
        assert [s.name for s in st] == ["audit-subset", "audit-train", "audit-extract", "audit-membership"]
        assert st[-1].needs == ["audit-subset", "audit-train"] and st[1].argv[0] == "train"


# ---- the owner's whole set: membership aggregated, beside the watermark (issue 21) -------------------

def test_mann_whitney_matches_scipy_with_ties_and_stays_finite_far_in_the_tail():
    from scipy.stats import mannwhitneyu

    from trustdiff.audit import mann_whitney_test

    g = np.random.default_rng(0)
    m, n = g.integers(0, 12, 70).astype(float) + 0.7, g.integers(0, 12, 90).astype(float)   # many ties
    t = mann_whitney_test(m, n)
    ref = mannwhitneyu(m, n, alternative="greater", method="asymptotic", use_continuity=True)
    assert t["u"] == pytest.approx(ref.statistic) and t["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert t["auc"] == pytest.approx(auc(m, n))
    # complete separation of 3000 vs 3000: p is far below a float's range, log10 p is not
    from scipy.stats import norm

    far = mann_whitney_test(np.arange(3000.0) + 3000, np.arange(3000.0))
    z = (3000 * 3000 / 2 - 0.5) / np.sqrt(3000 * 3000 * 6001 / 12)          # U = m·n, no ties
    assert far["p_value"] == 0.0 and far["log10_p"] == pytest.approx(norm.logsf(z) / np.log(10), rel=1e-12)
    assert far["log10_p"] < -900
    # the same set on both sides: no evidence of membership
    same = mann_whitney_test(n, n)
    assert same["auc"] == 0.5 and same["p_value"] > 0.5
    assert mann_whitney_test([1.0, 1.0], [1.0])["log10_p"] == 0.0
    with pytest.raises(InputError, match="finite"):
        mann_whitney_test([np.nan], [1.0])


def test_binomial_tail_is_exact_for_small_n_and_in_log_space_for_huge_evidence():
    from fractions import Fraction
    from math import comb, log

    from trustdiff.audit import binomial_log_tail, detection_count_test

    p = Fraction(1, 7)
    for n, k in ((10, 0), (10, 3), (10, 10), (25, 9)):
        exact = sum(comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))
        assert binomial_log_tail(k, n, 1 / 7) == pytest.approx(log(exact), rel=1e-10, abs=1e-12)
    # every one of 500 images detected at FPR 1e-6: p = 1e-3000 exactly
    assert detection_count_test(500, 500, 1e-6)["log10_p"] == pytest.approx(-3000.0, rel=1e-12)
    assert detection_count_test(0, 500, 1e-6)["p_value"] == 1.0
    with pytest.raises(InputError, match="at most n"):
        binomial_log_tail(6, 5, 0.5)


def test_dataset_tests_keep_p_valid_when_sigma_is_chosen_from_the_data():
    from trustdiff.audit import membership_dataset_tests

    g = torch.Generator().manual_seed(0)
    sig = [0.1, 0.5, 1.0]
    # members score higher at σ = 0.5 only
    ms, ns = torch.randn(400, 3, generator=g), torch.randn(400, 3, generator=g)
    ms[:, 1] += 0.5
    rep = membership_report({"loss": ms}, {"loss": ns}, sig, seed=3)
    d = membership_dataset_tests({"loss": ms}, {"loss": ns}, sig, rep, seed=3)["loss"]
    assert d["bonferroni"]["sigma"] == 0.5 and d["selected"]["sigma"] == 0.5
    best = min(p["log10_p"] for p in d["per_sigma"])
    assert d["bonferroni"]["log10_p"] == pytest.approx(best + np.log10(3))
    assert d["selected"]["members"] == 200 and d["selected"]["log10_p"] < -5 and d["bonferroni"]["log10_p"] < -10
    # no difference at all: neither p is small
    rep0 = membership_report({"loss": ns}, {"loss": ns.flip(0)}, sig, seed=3)
    d0 = membership_dataset_tests({"loss": ns}, {"loss": ns.flip(0)}, sig, rep0, seed=3)["loss"]
    assert d0["bonferroni"]["p_value"] > 0.05


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("own") / "recipe"
    _ok("watermark", "recipe", "--resolution", "16", "--n-bits", "8", "--width", "8", "--enc-depth", "2", "--dec-depth", "3",
        "--codec-steps", "4", "--codec-batch", "8", "--l2-await", "0", "--l2-ramp", "2", "--size", "tiny", "--steps", "3",
        "--batch", "16", "-n", "8", "--sample-steps", "2", "--fpr", "0.01", "--no-fd", "--key", "0xa5", "--out", out)
    return out


def test_ownership_compares_membership_of_the_watermarked_set_with_the_watermark(recipe, tmp_path):
    _ok("audit", "ownership", "--recipe", recipe, "--sigmas", "0.1,1", "--repeats", "1", "--max-images", "60",
        "--out", tmp_path / "own")
    m = _json(tmp_path / "own" / "metrics.json")
    mem = m["membership"]
    assert set(mem["attacks"]) == {"loss", "pia"} and mem["attacks"]["loss"]["best"]["members"] == 60
    for d in m["membership_dataset"].values():
        assert len(d["per_sigma"]) == 2 and d["bonferroni"]["log10_p"] <= 0 and d["selected"]["members"] == 30
    rec = _json(recipe / "metrics.json")["detection"]
    for name in ("generated_watermarked", "generated_clean"):
        w = m["watermark_dataset"][name]
        assert (w["detected"], w["images"], w["fpr"]) == (rec[name]["detected"]["k"], 8, 0.01)
    assert "watermarked with the recipe's key" in m["sets"]["nonmembers"]
    assert (tmp_path / "own" / "roc.png").is_file() and (tmp_path / "own" / "scores.npz").is_file()
    from trustdiff.report import build_report

    html = build_report(tmp_path)
    assert "membership: loss" in html and "watermark: generated watermarked images" in html


def test_ownership_refuses_a_folder_that_is_no_recipe(tiny, tmp_path):
    from trustdiff.cli import main as cli

    assert cli(["audit", "ownership", "--recipe", str(tiny / "m"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
