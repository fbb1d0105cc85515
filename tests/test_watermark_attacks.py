"""Watermark removal attacks and the defenses (issue 20): the union-bound search statistics, the
search's reads, the new distortions, the attack chains, the model-level attacks, and the
`watermark attack` command at toy size."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from trustdiff.errors import InputError
from trustdiff.metrics.intervals import clopper_pearson
from trustdiff.nets.codec import Codec
from trustdiff.watermark import detect
from trustdiff.watermark.attacks import IMAGE_ATTACKS, apply_chain, cheapest_removal, image_attack, select_attacks
from trustdiff.watermark.distortions import crop, flip, gamma, hflip, random_distortion, shift, translate, uncrop, vflip
from trustdiff.watermark.model_attacks import prune, quantize_int8, zero_fraction
from trustdiff.watermark.search import SEARCHES, best_bits, best_of, read_all, resolve_search
from trustdiff.watermark.stats import (decide_threshold, match_threshold, null_check, p_value, search_fpr,
                                       search_p_value, search_threshold)

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from watermark_cli import CODEC  # noqa: E402
from watermark_cli import run as _run  # noqa: E402

torch.set_num_threads(1)


def test_search_threshold_is_the_union_bound():
    for n, f, k in [(64, 1e-6, 1), (64, 1e-6, 4), (64, 1e-6, 36), (32, 1e-3, 9), (16, 0.01, 25)]:
        t = search_threshold(n, f, k)
        assert t == match_threshold(n, f / k)
        assert search_fpr(n, t, k) <= f < search_fpr(n, t - 1, k) or t == 0
        assert search_p_value(t, n, k) == min(1.0, k * p_value(t, n))
    assert search_threshold(64, 1e-6, 1) == 51 and search_threshold(64, 1e-6, 4) == 52
    assert search_p_value(0, 8, 4) == 1.0
    with pytest.raises(InputError):
        search_threshold(64, 1e-6, 0)


def test_best_of_k_independent_fair_reads_stays_below_the_bound():
    # K independent fair reads: P(max ≥ t) = 1 − (1 − p)^K ≤ K·p; the empirical rate agrees
    g = torch.Generator().manual_seed(0)
    n, k, images = 16, 9, 20000
    reads = torch.randint(0, 2, (k, images, n), generator=g)
    key = torch.randint(0, 2, (n,), generator=g)
    m, _ = best_of(reads, key)
    for f in (0.1, 0.01):
        t = search_threshold(n, f, k)
        p = p_value(t, n)
        exact = 1 - (1 - p) ** k
        hits = int((m >= t).sum())
        lo, hi = clopper_pearson(hits, images, 0.999)
        assert lo <= exact <= hi and exact <= search_fpr(n, t, k) <= f


def test_best_of_prefers_the_first_transform_on_a_tie():
    reads = torch.tensor([[[1, 0]], [[1, 0]], [[1, 1]]])
    m, which = best_of(reads, torch.tensor([1, 0]))
    assert m.tolist() == [2] and which.tolist() == [0]


def test_searched_null_checks_fail_only_on_excess():
    clean = torch.zeros(200, dtype=torch.int64)          # nothing reaches any threshold: conservative
    plain = null_check(clean, 16, (0.1,), searched=1)[0]
    searched = null_check(clean, 16, (0.1,), searched=4)[0]
    assert not plain.passed and searched.passed and not searched.excess
    hot = torch.full((200,), 16, dtype=torch.int64)       # every clean image detected: anti-conservative
    assert not null_check(hot, 16, (0.1,), searched=4)[0].passed
    thr, _ = decide_threshold(16, 0.1, clean, searched=4)
    assert thr.mode == "analytic" and thr.searched == 4 and thr.value == search_threshold(16, 0.1, 4)


def _pixel_decoder(x):
    """bits = the first 16 pixels thresholded: a decoder whose reads move with the image."""
    return (x.flatten(1)[:, :16] > 0.5).to(torch.int64)


def test_the_flip_search_undoes_a_flip_exactly():
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    key = _pixel_decoder(x)                                # per-image keys: each image's own bits
    for attack, undo_label in ((hflip, "hflip"), (vflip, "vflip"), (lambda z: hflip(vflip(z)), "hvflip")):
        bits, which = best_bits(_pixel_decoder, attack(x), key, "flips")
        assert torch.equal(bits, key)
        labels = [t for t, _ in resolve_search("flips")]
        assert all(labels[i] == undo_label for i in which.tolist())
    bits, which = best_bits(_pixel_decoder, x, key, "flips")
    assert torch.equal(bits, key) and which.tolist() == [0] * 6
    assert [len(SEARCHES[s]) for s in ("none", "flips", "shifts", "shifts2", "flips+shifts", "geometry")] == [1, 4, 9, 25, 36, 36]
    assert len(read_all(_pixel_decoder, x, "shifts")) == 9
    with pytest.raises(InputError):
        resolve_search("rotations")


def test_detect_through_a_search_reads_a_flipped_image_as_well_as_the_original():
    torch.manual_seed(0)
    codec = Codec(resolution=16, channels=1, n_bits=16, width=4, enc_depth=2, dec_depth=3, hidden=16).eval()
    x = torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    key = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(3))
    plain = detect(codec, x, key, fpr=0.01)
    searched = detect(codec, hflip(x), key, fpr=0.01, search="flips")
    assert (searched.matches >= plain.matches).all()
    assert searched.threshold.searched == 4 and searched.threshold.value == search_threshold(16, 0.01, 4)
    assert torch.allclose(searched.p_values, torch.tensor([search_p_value(int(m), 16, 4) for m in searched.matches],
                                                          dtype=torch.float64))
    s = searched.summary()
    assert s["searched"] == ["id", "hflip", "vflip", "hvflip"] and sum(s["read_under"].values()) == 20
    with pytest.raises(InputError, match="search of 1"):
        detect(codec, x, key, threshold=plain.threshold, search="flips")


def test_translate_is_exact_and_fills_with_the_edge():
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(4))
    y = translate(x, 2, -1)
    assert torch.equal(y[..., :-1, 2:], x[..., 1:, :-2])
    assert torch.equal(y[..., :, 0], y[..., :, 2]) and torch.equal(y[..., -1, :], y[..., -2, :])
    assert torch.equal(translate(x, 0, 0), x)
    back = translate(translate(x, 1, 0), -1, 0)
    assert torch.equal(back[..., :-1], x[..., :-1])
    for bad in ((9, 0), (0, -7), (0.5, 0)):
        with pytest.raises(InputError):
            translate(x, *bad)


def test_uncrop_inverts_a_crop_at_its_offset():
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:24, 8:24] = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    y = crop(x, 0.9, generator=torch.Generator().manual_seed(0))
    t = (torch.rand((4, 2), generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.1     # crop's own draw
    for i in range(4):
        back = uncrop(y[i:i + 1], 0.9, float(t[i, 0]), float(t[i, 1]))
        wrong = uncrop(y[i:i + 1], 0.9, -float(t[i, 0]), -float(t[i, 1]))
        err = (back - x[i:i + 1]).abs().mean()
        assert err < 0.5 * (y[i:i + 1] - x[i:i + 1]).abs().mean() and err < (wrong - x[i:i + 1]).abs().mean()
    assert torch.allclose(uncrop(x, 1.0), x, atol=1e-6)
    with pytest.raises(InputError):
        uncrop(x, 0.0)


def test_random_shift_flip_and_gamma_are_seeded_in_range_and_differentiable():
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    for f in (lambda z, g: shift(z, 3, generator=g), lambda z, g: flip(z, generator=g)):
        a, b = f(x, torch.Generator().manual_seed(0)), f(x, torch.Generator().manual_seed(0))
        assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(flip(x, 1.0), hflip(x)) and torch.equal(flip(x, 0.0), x)
    assert torch.allclose(gamma(x, 2.0), x ** 2)
    for kind in ("shift", "flip", "gamma"):
        xr = x.clone().requires_grad_(True)
        random_distortion(xr, [kind], torch.Generator().manual_seed(0)).sum().backward()
        assert xr.grad is not None


@pytest.mark.parametrize("label", [a[0] for a in IMAGE_ATTACKS])
def test_every_attack_keeps_shape_and_range_and_is_seeded(label):
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    a, b = image_attack(x, label, seed=1), image_attack(x, label, seed=1)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    if label != "none":
        assert not torch.equal(a, x)


def test_attack_selection_and_chains():
    assert [a[0] for a in select_attacks(["hflip", "move-1"])] == ["hflip", "move-1"]
    assert len(select_attacks("all")) == len(IMAGE_ATTACKS)
    with pytest.raises(InputError, match="expected names"):
        select_attacks(["hflip", "twirl"])
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(apply_chain(x, [("hflip", {}), ("hflip", {})]), x)


def test_cheapest_removal_picks_the_least_visible_attack_that_removes():
    def row(a, tpr, p):
        return {"attack": a, "s": {"tpr@1e-06": {"value": tpr}, "psnr": p, "ssim": 0.9}}
    rows = [row("none", 1.0, float("inf")), row("jpeg-30", 0.2, 30.0), row("hflip", 0.0, 12.0), row("blur-1.0", 0.9, 35.0)]
    assert cheapest_removal(rows, "s", 1e-6)["attack"] == "jpeg-30"
    assert cheapest_removal(rows[:1] + rows[3:], "s", 1e-6) is None
    assert cheapest_removal([row("none", 0.1, float("inf"))], "s", 1e-6)["attack"] is None


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))


def test_prune_zeroes_the_smallest_weights_and_leaves_the_original():
    net = _net()
    before = [p.clone() for p in net.parameters()]
    p = prune(net, 0.5)
    assert abs(zero_fraction(p) - 0.5) < 0.02 and zero_fraction(net) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    w, w0 = p[0].weight, net[0].weight
    kept = w != 0
    assert w0[~kept].abs().max() <= w0[kept].abs().min()          # the smallest ones went
    assert torch.equal(p[0].bias, net[0].bias)
    with pytest.raises(InputError):
        prune(net, 1.0)


def test_int8_rounds_each_output_channel_to_255_levels():
    net = _net()
    q = quantize_int8(net)
    for w, w0 in ((q[0].weight, net[0].weight), (q[2].weight, net[2].weight)):
        s = w0.abs().flatten(1).amax(1) / 127
        levels = w.flatten(1) / s[:, None]
        assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 127 + 1e-4
        assert ((w - w0).abs().flatten(1) <= s[:, None] / 2 + 1e-7).all()
    assert torch.equal(q[0].bias, net[0].bias)


def test_attack_command_reports_every_part_and_resumes(tmp_path):
    _run(["train-codec", *CODEC, "--out", tmp_path / "codec"])
    out = tmp_path / "att"
    args = ["attack", "--codec", tmp_path / "codec", "--key", "0xa5", "--embed", "digits", "--embed-images", "12",
            "--attacks", "none,hflip,move-1,jpeg-50", "--clean", "digits", "--clean-images", "40", "--fpr", "0.01,0.1",
            "--no-fd", "--out", out]
    r = _run(args)
    assert "cheapest removal found" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["search"] == "flips" and m["searched"] == 4
    assert set(m["targets"]["heldout"]) == {"hflip", "move-1", "jpeg-50"}
    assert m["thresholds"] == {"0.01": search_threshold(8, 0.01, 4), "0.1": search_threshold(8, 0.1, 4)}
    rows = json.loads((out / "attacks.json").read_text())["rows"]
    assert [r["attack"] for r in rows] == ["none", "hflip", "move-1", "jpeg-50"]
    for r in rows:
        assert r["heldout"]["tpr@0.01"]["n"] == 12 and r["clean"]["fpr@0.01"]["n"] == 40
    assert rows[0]["heldout"]["psnr"] == float("inf")
    # the hflip row reads the flipped images under the un-flip exactly: the same Bit-Acc as "none"
    assert rows[1]["heldout"]["bit_acc"] >= rows[0]["heldout"]["bit_acc"]
    _run(["attack", "--resume", "--out", out])
    assert json.loads((out / "attacks.json").read_text())["rows"] == rows


def test_distortion_grid_is_the_attack_table_with_the_clean_images_as_a_set(tmp_path):
    from trustdiff.watermark.distortions import GRID, apply
    from trustdiff.watermark.sweeps import distortion_grid

    torch.manual_seed(0)
    codec = Codec(resolution=16, channels=1, n_bits=16, width=4, enc_depth=2, dec_depth=3, hidden=16).eval()
    x = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    clean = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    key = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(7))
    grid = [g for g in GRID if g[0] in ("none", "noise-0.05", "crop-0.9")]
    rows = distortion_grid(tmp_path, codec, key, {"heldout": x}, clean, fpr=0.01, seed=3, grid=grid, progress=lambda s: None)
    assert [r["distortion"] for r in rows] == ["none", "crop-0.9", "noise-0.05"]
    for r, (label, name, params) in zip(rows, grid):
        for set_name, imgs in (("heldout", x), ("clean", clean)):
            y = apply(name, imgs, generator=torch.Generator().manual_seed(3), **params)
            d = detect(codec, y, key, fpr=0.01).summary()
            assert r[set_name]["bit_acc"] == pytest.approx(d["bit_acc_mean"])
            assert r[set_name]["detected"]["k"] == d["detected"]["k"]
    assert json.loads((tmp_path / "distortions.json").read_text())["clean_images"] == 10


def test_finetune_is_the_watermarked_model_trained_on(tmp_path):
    """At a vanishing learning rate (Adam moves each weight by about lr per step) the fine-tuned
    EMA is the loaded model (nothing lost on the way); at the recipe's scale the weights move."""
    from dataclasses import replace

    from trustdiff.diffusion.model import ModelSpec, build_denoiser, load_model, save_model
    from trustdiff.watermark.model_attacks import finetune
    from trustdiff.watermark.recipe import default_diffusion

    spec = ModelSpec(size="tiny", resolution=8, channels=1)
    torch.manual_seed(0)
    unet, _ = build_denoiser(spec)
    model = save_model(tmp_path / "model", unet, spec)
    orig = load_model(model)[0].net.state_dict()
    base = default_diffusion()
    for lr, run in ((1e-12, "ft0"), (1e-3, "ft")):
        job = replace(base, train=replace(base.train, lr=lr, batch_size=8, progress=False))
        den, spec2 = finetune(model, "digits", 2, tmp_path / run, base_job=job)
        sd = den.net.state_dict()
        assert spec2 == load_model(model)[1] and set(sd) == set(orig)
        same = all(torch.allclose(sd[k].float(), orig[k].float(), atol=1e-6) for k in orig)
        assert same == (lr < 1e-9), lr
