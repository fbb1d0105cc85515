"""trustdiff.watermark: exact binomial statistics, keys, distortions (seeded, range-preserving,
differentiable), the codec (overfits 16 images, exact resume of the L2 schedule, save/load), the
per-key null calibration, embedding and detection."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from trustdiff.errors import CheckpointError, InputError
from trustdiff.nets.codec import Codec, StegaStampDecoder, StegaStampEncoder, bounded_residual, plane_side
from trustdiff.train import TrainConfig, fit
from trustdiff.watermark import (
    CodecObjective, check_key, decide_threshold, detect, detect_bits, empirical_threshold, key_from_seed,
    key_to_bits, key_to_hex, l2_weight, load_codec, match_threshold, null_calibration, null_check, p_value,
    parse_key, random_keys, save_codec, shifted_copies, synthetic_strokes, watermark, write_watermarked,
)
from trustdiff.watermark import distortions as D
from trustdiff.watermark.codec import decode_bits

torch.set_num_threads(1)

# ---- statistics ------------------------------------------------------------------------------


def _exact_tail(m: int, n: int) -> float:
    return sum(math.comb(n, k) for k in range(m, n + 1)) / 2 ** n


def test_p_value_matches_exact_binomial():
    for n in (4, 16, 64, 128):
        for m in range(n + 1):
            p = p_value(m, n)
            assert p == pytest.approx(_exact_tail(m, n), rel=1e-12, abs=0)
            assert p == pytest.approx(binom.sf(m - 1, n, 0.5), rel=1e-9, abs=1e-300)
    assert p_value(0, 64) == 1.0 and p_value(64, 64) == 2.0 ** -64


def test_match_threshold_64_bits_at_1e6_is_exact():
    m = match_threshold(64, 1e-6)
    assert m == 51                                                    # by the exact computation below
    assert _exact_tail(m, 64) <= 1e-6 < _exact_tail(m - 1, 64)
    assert binom.sf(m - 1, 64, 0.5) <= 1e-6 < binom.sf(m - 2, 64, 0.5)
    for n in (4, 16, 32, 64, 128):
        for fpr in (0.5, 1e-2, 1e-3, 1e-6, 1e-9):
            t = match_threshold(n, fpr)
            assert t == n + 1 or _exact_tail(t, n) <= fpr
            assert t == 0 or _exact_tail(t - 1, n) > fpr              # the least such count
    assert match_threshold(4, 1e-6) == 5                              # 4 bits can never reach 1e-6
    with pytest.raises(InputError, match="fpr"):
        match_threshold(64, 0.0)
    with pytest.raises(InputError, match="n_match"):
        p_value(65, 64)


def test_null_check_and_threshold_decision():
    g = torch.Generator().manual_seed(0)
    key = key_from_seed(1, 32)
    fair = torch.randint(0, 2, (4000, 32), generator=g)
    thr, checks = decide_threshold(32, 1e-3, (fair == key).sum(1))
    assert thr.mode == "analytic" and thr.value == match_threshold(32, 1e-3) and all(c.within for c in checks)
    # a decoder that reads (nearly) the key itself from every clean image: the analytic threshold fails
    biased = key.expand(4000, -1).clone()
    flip = torch.rand(biased.shape, generator=g) < 0.1
    biased[flip] = 1 - biased[flip]
    thr2, checks2 = decide_threshold(32, 1e-3, (biased == key).sum(1))
    assert thr2.mode == "calibrated" and any(c.excess for c in checks2)
    m = (biased == key).sum(1)
    assert thr2.value == max(match_threshold(32, 1e-3), empirical_threshold(m, 32, 1e-3))
    assert int((m >= thr2.value).sum()) <= math.floor(1e-3 * 4000)
    assert "outside" in thr2.reason
    c = null_check(torch.full((100,), 32), 32, (0.1,))[0]
    assert c.k == 100 and c.excess and not c.within


# ---- keys --------------------------------------------------------------------------------------


def test_keys_parse_and_reject_clearly():
    k = parse_key("0x6f", 8)
    assert k.tolist() == [0, 1, 1, 0, 1, 1, 1, 1] and key_to_hex(k) == "0x6f" and key_to_bits(k) == "01101111"
    assert parse_key("0110 1111").tolist() == k.tolist()
    assert torch.equal(key_from_seed(3, 64), key_from_seed(3, 64)) and not torch.equal(key_from_seed(3, 64), key_from_seed(4, 64))
    with pytest.raises(InputError, match="expected 64 bits, got 2 hex digits = 8 bits"):
        parse_key("0x6f", 64)
    with pytest.raises(InputError, match="0s and 1s"):
        parse_key("01201")
    with pytest.raises(InputError, match="hex"):
        parse_key("0xzz")
    with pytest.raises(InputError, match="expected 16 bits, got 15"):
        check_key([0, 1] * 7 + [1], 16)
    with pytest.raises(InputError, match="only 0s and 1s"):
        check_key([0, 1, 2, 1], 4)
    with pytest.raises(InputError, match="only 0s and 1s"):
        check_key(torch.tensor([0.0, 0.5, 1.0, 1.0]), 4)
    with pytest.raises(InputError, match="per-image keys"):
        check_key(torch.zeros(3, 8), 8, per_image=4)
    assert check_key(torch.ones(4, 8), 8, per_image=4).shape == (4, 8)
    for bad in ("0x6g", "", "0b", "1" * 200):
        with pytest.raises(InputError):
            parse_key(bad)


# ---- distortions ---------------------------------------------------------------------------------


def _edge_images():
    z, o = torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)
    checker = ((torch.arange(16).view(-1, 1) + torch.arange(16)) % 2).float().view(1, 1, 16, 16)
    near = torch.full((1, 1, 16, 16), 0.999)
    near[..., ::2, :] = 0.001
    return torch.cat([z, o, checker, near])


@pytest.mark.parametrize("label,name,params", D.GRID)
def test_distortions_keep_range_shape_and_are_seeded(label, name, params):
    x = _edge_images()
    a = D.apply(name, x, generator=torch.Generator().manual_seed(5), **params)
    b = D.apply(name, x, generator=torch.Generator().manual_seed(5), **params)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0, label
    assert torch.equal(a, b), label


def test_distortions_random_parts_follow_the_generator_and_training_ones_are_differentiable():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = D.crop(x, 0.5, generator=torch.Generator().manual_seed(1))
    b = D.crop(x, 0.5, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    for kind in D.TRAIN_RANGES:
        xr = x.clone().requires_grad_(True)
        y = D.apply(D._TRAIN_FN[kind], xr, generator=torch.Generator().manual_seed(0),
                    **({"differentiable": True} if kind == "jpeg" else {}))
        y.sum().backward()
        assert xr.grad is not None and torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0, kind


def test_differentiable_jpeg_tracks_real_jpeg():
    from trustdiff.metrics import psnr
    from trustdiff.images import from_uint8, to_uint8

    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(6, 3, 8, 8, generator=g), size=32, mode="bilinear")
    x = from_uint8(to_uint8(base))
    for q in (90, 50):
        real, approx = D.jpeg(x, q), D.jpeg(x, q, differentiable=True)
        assert float(psnr(real, approx).mean()) > 35, q       # same transform up to chroma / rounding order
        assert float(psnr(real, x).mean()) < 60                # and JPEG does change the image


def test_bounded_residual_keeps_range_and_learns_from_zero():
    x = torch.tensor([0.0, 0.3, 1.0])
    r = torch.zeros(3, requires_grad=True)
    y = bounded_residual(x, r)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(r.grad, torch.tensor([1.0, 0.7, 0.0]))
    big = bounded_residual(torch.rand(1000), 50 * torch.randn(1000))
    assert float(big.min()) >= 0 and float(big.max()) <= 1


# ---- the codec -----------------------------------------------------------------------------------


def test_codec_shapes_for_several_resolutions_and_bit_lengths():
    assert plane_side(32) == 16 and plane_side(48) == 16 and plane_side(40) == 20 and plane_side(8) == 8
    for res, n, ed, dd in ((16, 4, 2, 4), (32, 128, 4, 5), (24, 16, 3, 3), (64, 64, 4, 5)):
        c = Codec(res, 3, n, width=4, enc_depth=ed, dec_depth=dd, hidden=16)
        x = torch.rand(2, 3, res, res)
        xw, logits = c(x, torch.randint(0, 2, (2, n)))
        assert xw.shape == x.shape and logits.shape == (2, n)
        assert float(xw.detach().min()) >= 0 and float(xw.detach().max()) <= 1
    with pytest.raises(InputError, match="multiple of the network stride 32"):
        Codec(48, 1, 64)
    with pytest.raises(InputError, match="n_bits"):
        Codec(32, 1, 200)
    with pytest.raises(InputError, match="n_bits"):
        StegaStampDecoder(32, 1, 3)
    with pytest.raises(InputError, match="channels"):
        StegaStampEncoder(32, 2, 16)


def _tiny_codec(n_bits=8, seed=0):
    torch.manual_seed(seed)
    return Codec(16, 1, n_bits, width=16, enc_depth=2, dec_depth=3, hidden=64)


def _digits16(n):
    from trustdiff.data import load_digits

    return load_digits(16, split="train").tensors()[0][:n]


@pytest.fixture(scope="module")
def overfit_codec():
    """A codec trained on 16 digit images (random keys every step): the recipe's objective with
    the L2 term ramped in once the bits are read."""
    x = _digits16(16)
    codec = _tiny_codec()
    obj = CodecObjective(codec, gamma=5.0, l2_await=0, l2_ramp=100, activate_acc=0.9)
    opt = torch.optim.Adam(obj.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        loss = obj(x, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return codec.eval(), x, obj


def test_codec_overfits_16_images_to_bit_acc_1(overfit_codec):
    codec, x, obj = overfit_codec
    assert int(obj.l2_start) >= 0 and obj.current_gamma() > 0           # the L2 term came on
    keys = random_keys(16, codec.n_bits, generator=torch.Generator().manual_seed(99))   # fresh keys
    wm = watermark(codec, x, keys)                                         # rounded to uint8, as on disk
    assert float(wm["bit_acc"].mean()) == 1.0
    assert float(wm["psnr"].min()) > 20                                   # and the L2 term kept the images close


def test_l2_schedule_is_exact():
    kw = dict(gamma=10.0, l2_await=3, l2_ramp=4)
    assert l2_weight(100, -1, **kw) == 0.0
    assert [l2_weight(s, 10, **kw) for s in range(12, 20)] == [0.0, 0.0, 2.5, 5.0, 7.5, 10.0, 10.0, 10.0]
    assert l2_weight(13, 10, gamma=10.0, l2_await=3, l2_ramp=0) == 10.0


def test_codec_training_resumes_exactly_through_the_loop(tmp_path):
    """fit on the CodecObjective: 6 steps + resume to 12 == 12 straight, weights and schedule."""
    x = _digits16(32)
    y = torch.zeros(32, dtype=torch.int64)

    def run(d, steps, resume=False):
        obj = CodecObjective(_tiny_codec(), gamma=1.0, l2_await=1, l2_ramp=2, activate_acc=0.55, distortions=("noise", "jpeg"))
        cfg = TrainConfig(steps=steps, batch_size=8, lr=3e-3, warmup_steps=0, checkpoint_every=3, log_every=3,
                          progress=False, ema_halflife_kimg=0.01)
        return fit(obj, lambda net, xb, yb, gen: net(xb, gen), (x, y), cfg, d, resume=resume).model

    straight = run(tmp_path / "a", 12)
    run(tmp_path / "b", 6)
    resumed = run(tmp_path / "b", 12, resume=True)
    sa, sb = straight.state_dict(), resumed.state_dict()
    assert int(sa["step"]) == 12
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_codec_save_load_roundtrip(overfit_codec, tmp_path):
    codec, x, _ = overfit_codec
    save_codec(tmp_path / "c", codec, data="digits")
    back = load_codec(tmp_path / "c")
    assert torch.equal(decode_bits(back, x), decode_bits(codec, x))
    assert back.config == codec.config
    (tmp_path / "c" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError):
        load_codec(tmp_path / "c")
    with pytest.raises(CheckpointError, match="codec folder"):
        load_codec(tmp_path / "nothing")


# ---- embedding and detection ---------------------------------------------------------------------


def test_embed_writes_a_loadable_watermarked_set(overfit_codec, tmp_path):
    from trustdiff.data import load

    codec, x, _ = overfit_codec
    key = parse_key("0xa5", 8)
    wm = watermark(codec, x, key)
    path = write_watermarked(tmp_path / "wm.npz", wm, torch.arange(16) % 10)
    s = load(str(path))
    assert len(s) == 16 and s.num_classes == 10
    assert torch.equal(s.tensors()[0], wm["images"])                        # exactly the uint8 images measured
    with np.load(path) as d:
        assert d["key_hex"].item() == "0xa5" and d["psnr"].shape == (16,)
    with pytest.raises(InputError, match="expected 8 bits"):
        watermark(codec, x, key_from_seed(0, 16))
    with pytest.raises(InputError, match="channels"):
        watermark(codec, torch.rand(2, 3, 16, 16), key)


def test_strength_scales_the_residual_and_buys_its_psnr(overfit_codec):
    from trustdiff.watermark.codec import encode

    codec, x, _ = overfit_codec
    key = parse_key("0xa5", 8)
    full = encode(codec, x, key)
    for a in (0.5, 0.9):
        torch.testing.assert_close(encode(codec, x, key, strength=a) - x, a * (full - x))
        wm, wm1 = watermark(codec, x, key, strength=a, round_uint8=False), watermark(codec, x, key, round_uint8=False)
        # PSNR(α) = PSNR(1) − 20·log10 α exactly before rounding
        torch.testing.assert_close(wm["psnr"], wm1["psnr"] - 20 * math.log10(a))
    assert torch.equal(encode(codec, x, key, strength=1.0), full)
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(InputError, match="strength"):
            encode(codec, x, key, strength=bad)


def test_detect_finds_the_key_and_not_another(overfit_codec):
    codec, x, _ = overfit_codec
    key = parse_key("10110010", 8)
    wm = watermark(codec, x, key)["images"]
    det = detect(codec, wm, key, fpr=1e-2)
    assert det.threshold.value == match_threshold(8, 1e-2) == 8
    s = det.summary()
    assert s["bit_acc_mean"] == 1.0 and s["detected"]["k"] == 16 and s["threshold_mode"] == "analytic"
    assert torch.allclose(det.p_values, torch.full((16,), 2.0 ** -8, dtype=torch.float64))
    other = detect(codec, wm, 1 - key, fpr=1e-2).summary()
    assert other["detected"]["k"] == 0 and other["bit_acc_mean"] == 0.0
    with pytest.raises(InputError, match="expected 8 bits"):
        detect(codec, wm, [1, 0, 1], fpr=1e-2)


def test_detect_calibrates_when_the_clean_bits_are_not_fair():
    key = parse_key("1" * 16, 16)
    clean = torch.ones(500, 16, dtype=torch.int64)
    clean[:, :2] = 0                                      # every clean image reads 14 of 16 bits of the key
    det = detect_bits(torch.ones(3, 16, dtype=torch.int64), key, fpr=1e-2, clean_bits=clean)
    assert match_threshold(16, 1e-2) == 14                # which every clean image would reach
    assert det.threshold.mode == "calibrated" and det.threshold.value == 15 and det.threshold.empirical == 15
    assert det.summary()["detected"]["k"] == 3


# ---- the null ------------------------------------------------------------------------------------


def test_clean_sources_are_seeded_and_in_range():
    a = synthetic_strokes(20, 16, generator=torch.Generator().manual_seed(0))
    b = synthetic_strokes(20, 16, generator=torch.Generator().manual_seed(0))
    assert a.shape == (20, 1, 16, 16) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert float(a.amax(dim=(1, 2, 3)).min()) > 0.5                       # every image has a stroke
    x = _digits16(10)
    s = shifted_copies(x, 35, generator=torch.Generator().manual_seed(0))
    assert s.shape == (35, 1, 16, 16) and torch.equal(s[:10], x)
    assert all(not torch.equal(s[10 + i], x[i % 10]) for i in range(25))


def test_null_calibration_reports_mean_bit_acc_over_keys(overfit_codec):
    codec, _, _ = overfit_codec
    sets = {"strokes": synthetic_strokes(300, 16, generator=torch.Generator().manual_seed(1))}
    keys = random_keys(20, codec.n_bits, generator=torch.Generator().manual_seed(2))
    r = null_calibration(codec, sets, keys, fprs=(0.1, 0.01))
    s = r["sets"]["strokes"]
    assert r["keys"] == 20 and len(s["per_key"]) == 20 and s["checks"] == 40
    assert 0.0 <= s["mean_bit_acc"] <= 1.0 and s["deviation"] == pytest.approx(s["mean_bit_acc"] - 0.5)
    # per nominal rate: the failing keys add up to the failed checks, and the largest rate is a key's
    fa = s["failed_at"]
    assert sorted(fa) == ["0.01", "0.1"] and sum(v["keys_failing"] for v in fa.values()) == s["checks_failed"]
    for f, v in fa.items():
        rates = [c["rate"] for k in s["per_key"] for c in k["checks"] if f"{c['fpr']:g}" == f]
        assert v["max_rate"] == max(rates)


def test_fair_bits_make_every_key_match_clean_images_half_the_time(overfit_codec, tmp_path):
    """The offsets are the per-bit median logits of the clean images: on those images each bit is
    1 on exactly N/2 of an even N (distinct logits), so for every key the mean match count is
    exactly n/2 — no key is favoured, which is what the analytic thresholds assume."""
    from trustdiff.watermark import decode_logits
    from trustdiff.watermark.codec import fair_bits
    from trustdiff.watermark.stats import matches

    codec, _, _ = overfit_codec
    clean = synthetic_strokes(40, 16, generator=torch.Generator().manual_seed(5))
    raw = decode_bits(codec, clean).double().mean(0)
    fair = fair_bits(codec, clean)
    assert fair.decoder is codec.decoder and fair.encoder is codec.encoder             # the same weights
    one_rate = decode_bits(fair, clean).double().mean(0)
    assert torch.all(one_rate == 0.5), one_rate
    keys = random_keys(6, codec.n_bits, generator=torch.Generator().manual_seed(3))
    for k in keys:
        assert float(matches(decode_bits(fair, clean), k).double().mean()) == codec.n_bits / 2
    assert not torch.all(raw == 0.5)                                                 # the raw decoder was not fair
    # the decision is logit > offset, and the offsets survive a save and a load
    logits = decode_logits(fair, clean)
    assert torch.equal(decode_bits(fair, clean), (logits > fair.bit_offset).long())
    loaded = load_codec(save_codec(tmp_path / "c", fair))
    assert torch.equal(loaded.bit_offset, fair.bit_offset) and torch.equal(decode_bits(loaded, clean), decode_bits(fair, clean))
    assert "bit_offsets" not in codec.config and torch.equal(codec.bit_offset, torch.zeros(codec.n_bits))
    with pytest.raises(InputError, match="bit_offsets: expected 8 finite floats"):
        Codec(16, 1, 8, width=16, enc_depth=2, dec_depth=3, hidden=64, bit_offsets=[0.0] * 7)
    with pytest.raises(InputError, match="fair_bits: expected at least 2 clean images"):
        fair_bits(codec, clean[:1])


def test_fair_bits_keep_the_watermark(overfit_codec):
    """Watermarked images decode as before: their logits are far from the clean medians."""
    from trustdiff.watermark.codec import fair_bits

    codec, x, _ = overfit_codec
    fair = fair_bits(codec, x)
    keys = random_keys(16, codec.n_bits, generator=torch.Generator().manual_seed(99))
    assert float(watermark(fair, x, keys)["bit_acc"].mean()) == 1.0
