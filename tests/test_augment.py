"""Augmentations for adversarial training: invariants of every one (shape, range, targets,
determinism under a seed), exact structure of the crops, cutout and CutMix, and PIL as the oracle
of the image operations AutoAugment, RandAugment and IDBH use."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from trustdiff.advtrain.augment import (AUGMENTATIONS, CIFAR10_POLICY, RANDAUGMENT_OPS, augment, auto_contrast,
                                        brightness, contrast, crop_shift, cutmix, cutout, equalize, invert, pad_crop,
                                        posterize, sharpness, solarize)
from trustdiff.errors import InputError

K = 10


def _batch(n=32, c=1, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, c, side, side, generator=g) * 255).round() / 255          # on the 8-bit grid, like PIL's
    return x, torch.randint(0, K, (n,), generator=g)


@pytest.mark.parametrize("name", AUGMENTATIONS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_augmentation_keeps_shape_range_and_is_seeded(name, channels):
    x, y = _batch(c=channels)
    a, t = augment(name, x, y, K, torch.Generator().manual_seed(1))
    b, u = augment(name, x, y, K, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= 0 and a.max() <= 1
    assert t.shape == (len(x), K) and torch.allclose(t.sum(1), torch.ones(len(x))) and (t >= 0).all()
    assert torch.equal(a, b) and torch.equal(t, u)                                    # same seed, same batch
    if name != "none":
        c, _ = augment(name, x, y, K, torch.Generator().manual_seed(2))
        assert not torch.equal(a, c) and not torch.equal(a, x)
    if name != "cutmix":
        assert torch.equal(t, torch.nn.functional.one_hot(y, K).float())             # labels untouched


def test_none_is_the_identity_and_unknown_names_are_refused():
    x, y = _batch()
    a, _ = augment("none", x, y, K)
    assert torch.equal(a, x)
    with pytest.raises(InputError, match="augment"):
        augment("mixup", x, y, K)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_flip_false_never_mirrors(name, monkeypatch):
    import trustdiff.advtrain.augment as A

    x, y = _batch()
    flipped = augment(name, x, y, K, torch.Generator().manual_seed(1))[0]
    monkeypatch.setattr(A, "hflip", lambda *a, **k: pytest.fail("hflip called under flip=False"))
    a, _ = augment(name, x, y, K, torch.Generator().manual_seed(1), flip=False)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    if name in ("common", "idbh"):                     # the pipelines that flip: the flip's draw changes the batch
        assert not torch.equal(a, flipped)


def test_common_without_flip_keeps_ink_on_its_side():
    x = torch.zeros(64, 1, 16, 16)
    x[..., :4] = 1.0                                   # ink in the 4 left columns only
    y = torch.zeros(64, dtype=torch.long)
    cols = torch.arange(16.0)

    def centroids(img):
        return (img.sum((1, 2)) * cols).sum(1) / img.sum((1, 2, 3))

    kept = centroids(augment("common", x, y, K, torch.Generator().manual_seed(0), flip=False)[0])
    assert (kept < 4).all()                            # a crop of padding 2 moves it by at most 2 columns
    mirrored = centroids(augment("common", x, y, K, torch.Generator().manual_seed(0))[0])
    assert 10 < int((mirrored > 12).sum()) < 54        # with the flip, about half land on the right


def test_the_digits_preset_turns_the_flip_off_and_the_option_overrides_it():
    from trustdiff.advtrain.training import PRESETS
    from trustdiff.cli.advtrain import train_job

    def job(preset, flip):
        return train_job(0, preset=preset, **{k: None for k in PRESETS[preset]} | {"flip": flip})

    assert job("digits", None).flip is False and job("cifar10-wang2023", None).flip is True
    assert job("digits", True).flip is True and job("cifar10-wang2023", False).flip is False


def test_pad_crop_is_a_whole_pixel_shift_with_zero_fill():
    x, _ = _batch(n=16)
    out = pad_crop(x, torch.Generator().manual_seed(0), 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        shifts = [padded[i, :, dy:dy + 16, dx:dx + 16] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], s) for s in shifts)


def test_cutout_zeroes_one_clipped_square_and_nothing_else():
    x, _ = _batch(n=16)
    x = x.clamp_min(1 / 255)                                     # no zero pixels before
    out = cutout(x, torch.Generator().manual_seed(0), 8)
    for i in range(len(x)):
        changed = (out[i] != x[i])[0]
        assert (out[i][0][changed] == 0).all() and 0 < changed.sum() <= 64
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        # a rectangle: every pixel of its bounding box was zeroed
        assert changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_cutmix_pastes_from_one_other_image_and_mixes_labels_by_area():
    _, y = _batch(n=24)
    x = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(9))      # no two pixels alike
    t = torch.nn.functional.one_hot(y, K).float()
    out, mixed = cutmix(x, t, torch.Generator().manual_seed(3), p=1.0)
    mixed_any = False
    for i in range(len(x)):
        from_other = (out[i] != x[i]).any(0)
        frac_other = 1 - mixed[i, y[i]].item() if mixed[i].max() < 1 else 0.0
        if from_other.any():
            j = [j for j in range(len(x)) if torch.equal(out[i][:, from_other], x[j][:, from_other])]
            assert j, "the pasted pixels come from another image of the batch"
            mixed_any = True
        # the label weight of the image's own class is at least the share of its own pixels kept
        assert mixed[i, y[i]].item() >= 1 - from_other.float().mean().item() - 1e-6
        assert 0 <= frac_other <= 1
    assert mixed_any and torch.allclose(mixed.sum(1), torch.ones(len(x)))


def test_crop_shift_moves_the_content_and_zero_fills():
    x, _ = _batch(n=16)
    x = x.clamp_min(1 / 255)
    out = crop_shift(x, torch.Generator().manual_seed(0), 0, 5)
    for i in range(len(x)):
        kept = out[i, 0] > 0
        # every kept pixel is the input at one common offset (a pure shift, no resampling)
        ok = False
        for dy in range(-5, 6):
            for dx in range(-5, 6):
                src = torch.roll(x[i, 0], shifts=(-dy, -dx), dims=(0, 1))
                if torch.equal(out[i, 0][kept], src[kept]):
                    ok = True
        assert ok and kept.sum() >= (16 - 5) ** 2 - 16 * 5


# --- PIL as the oracle of the image operations ---------------------------------------------------------

def _pil(x):
    return Image.fromarray((x[0, 0].numpy() * 255).round().astype(np.uint8), mode="L")


def _back(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255)[None, None]


@pytest.mark.parametrize("op,ours,pil", [
    ("equalize", lambda x: equalize(x), ImageOps.equalize),
    ("autocontrast", lambda x: auto_contrast(x), ImageOps.autocontrast),
    ("invert", lambda x: invert(x), ImageOps.invert),
    ("posterize-5", lambda x: posterize(x, torch.tensor([5.0])), lambda im: ImageOps.posterize(im, 5)),
    ("solarize-0.6", lambda x: solarize(x, torch.tensor([0.6])), lambda im: ImageOps.solarize(im, 0.6 * 255)),
    ("brightness-1.4", lambda x: brightness(x, torch.tensor([1.4])), lambda im: ImageEnhance.Brightness(im).enhance(1.4)),
    ("contrast-0.5", lambda x: contrast(x, torch.tensor([0.5])), lambda im: ImageEnhance.Contrast(im).enhance(0.5)),
    ("sharpness-1.8", lambda x: sharpness(x, torch.tensor([1.8])), lambda im: ImageEnhance.Sharpness(im).enhance(1.8)),
])
def test_image_operations_match_pil(op, ours, pil):
    g = torch.Generator().manual_seed(5)
    x = ((torch.rand(1, 1, 16, 16, generator=g) * 0.6 + 0.2) * 255).round() / 255       # a low-contrast image
    want = _back(pil(_pil(x)))
    got = ours(x)
    # PIL rounds to 8 bits (and contrast rounds its mean): within two grey levels
    assert (got - want).abs().max() <= 2 / 255 + 1e-6, f"{op}: {(got - want).abs().max() * 255:.2f} levels"


def test_the_policies_are_the_papers():
    assert len(CIFAR10_POLICY) == 25 and all(len(s) == 2 for s in CIFAR10_POLICY)    # Cubuk et al. 2019
    assert all(0 <= p <= 1 and 0 <= m <= 9 for s in CIFAR10_POLICY for _, p, m in s)
    assert len(RANDAUGMENT_OPS) == 14                                                 # Cubuk et al. 2020
