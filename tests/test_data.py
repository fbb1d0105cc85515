"""Data loaders: round trips through files written here, determinism of the digits split, refusal
of pickles that hold code, dispatch of ``load``, and a one-line InputError naming the file for
each malformed input. Offline; every fixture is a few bytes in tmp_path."""
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from trustdiff.data import (ImageDataset, ImageSet, load, load_cifar10, load_digits, load_image_folder,
                            load_mnist_idx, load_npz, resize)
from trustdiff.errors import InputError

# content_hash of load_digits(8, "test", seed=0): pins the split (and the hash) across versions
DIGITS_TEST_SEED0_HASH = "219eb6d0c900d885f4edad5456fe919313fbd32ee096f03304634b8ddde58665"


def one_line_error(call, *needles):
    """Run ``call``; it must raise InputError with a one-line message containing each needle."""
    with pytest.raises(InputError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, msg
    assert e.value.__cause__ is None or isinstance(e.value.__cause__, InputError)
    return msg


# --- digits -------------------------------------------------------------------------------

def test_digits_shapes_range_and_seeded_split():
    tr, te = load_digits(16, "train", seed=0), load_digits(16, "test", seed=0)
    assert tr.images.shape[1:] == (16, 16, 1) and tr.images.dtype == np.uint8 and tr.images.max() == 255
    assert (len(tr), len(te)) == (1438, 359) and tr.num_classes == 10 and tr.name == tr.source == "digits"
    assert set(np.unique(te.labels)) == set(np.unique(tr.labels)) == set(range(10))
    # stratified: every class is ~20% test
    counts = np.bincount(te.labels, minlength=10) / (np.bincount(te.labels, minlength=10) + np.bincount(tr.labels, minlength=10))
    assert np.all(np.abs(counts - 0.2) < 0.01)
    # disjoint and covering: train ∪ test is "all", as multisets of (image, label)
    key = lambda s: sorted(im.tobytes() + bytes([y]) for im, y in zip(s.images, s.labels))  # noqa: E731
    a8, tr8, te8 = load_digits(8, "all"), load_digits(8, "train"), load_digits(8, "test")
    assert key(a8) == sorted(key(tr8) + key(te8))
    assert not set(key(tr8)) & set(key(te8))
    # the same seed gives the same split, pinned; another seed another
    assert te8.content_hash() == DIGITS_TEST_SEED0_HASH
    assert load_digits(8, "test", seed=1).content_hash() != DIGITS_TEST_SEED0_HASH
    x, y = tr.tensors()
    assert x.shape == (len(tr), 1, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64 and y.tolist() == tr.labels.tolist()


def test_digits_at_native_resolution_are_the_sklearn_pixels():
    from sklearn.datasets import load_digits as sk

    a = load_digits(8, "all")
    assert np.array_equal(a.images[..., 0], np.round(sk().images * 255 / 16).astype(np.uint8))
    a.images[:] = 77                               # a copy: the cached raw data is untouched
    assert np.array_equal(load_digits(8, "all").images[..., 0], np.round(sk().images * 255 / 16).astype(np.uint8))


@pytest.mark.parametrize("kw, needle", [(dict(split="val"), "split"), (dict(resolution=2), "resolution"),
                                        (dict(test_fraction=1.0), "test_fraction"), (dict(seed=-1), "seed")])
def test_digits_bad_arguments(kw, needle):
    one_line_error(lambda: load_digits(**kw), needle)


def test_resize_and_dataset_items():
    s = resize(load_digits(8, "test"), 12)
    assert s.images.shape[1:] == (12, 12, 1) and s.labels.dtype == np.int64
    ds = ImageDataset(s)
    x, y = ds[3]
    assert x.shape == (1, 12, 12) and x.dtype == torch.float32 and isinstance(y, int) and y == s.labels[3]
    assert torch.equal(ds[-1][0], s.tensors()[0][-1])
    with pytest.raises(IndexError):
        ds[len(s)]
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert xb.shape == (5, 1, 12, 12) and yb.dtype == torch.int64
    one_line_error(lambda: resize(s, 2), "resolution")
    assert resize(s, np.int64(12)).images is s.images       # same size: nothing copied


def test_imageset_validation_subset_and_hash():
    im = np.zeros((3, 4, 4), np.uint8)
    s = ImageSet(im, np.array([0, 1, -1], np.int32), 2, "t", "src")
    assert s.images.shape == (3, 4, 4, 1) and s.labels.dtype == np.int64
    assert "n=3" in repr(s) and len(repr(s)) < 120
    one_line_error(lambda: ImageSet(im.astype(np.float32), np.zeros(3, np.int64), 1, "t", "src"), "src", "uint8")
    one_line_error(lambda: ImageSet(im, np.array([0, 2, 0]), 2, "t", "src"), "src", "labels")
    one_line_error(lambda: ImageSet(im, np.zeros(2, np.int64), 1, "t", "src"), "src", "3 integer labels")
    one_line_error(lambda: s.subset([5]), "subset")
    assert s.subset(np.array([True, False, True])).labels.tolist() == [0, -1]
    assert len(s.subset([])) == 0 and s.subset(2).labels.tolist() == [-1]
    a, b = load_digits(8, "test"), load_digits(8, "test")
    assert a.content_hash() == b.content_hash() and len(a.content_hash()) == 64
    assert a.content_hash() != a.subset(np.arange(len(a) - 1)).content_hash()


# --- MNIST idx ----------------------------------------------------------------------------

def _write_idx(path, arr, magic, gz=False):
    header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs, labs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5], np.uint8)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", imgs, 2051, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labs, 2049, gz)
    s = load_mnist_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", tmp_path / f"train-labels-idx1-ubyte{sfx}")
    assert np.array_equal(s.images[..., 0], imgs) and s.labels.tolist() == labs.tolist() and s.num_classes == 6
    assert s.name == tmp_path.name
    assert np.array_equal(load(str(tmp_path)).images, s.images)                      # a folder of idx files
    assert np.array_equal(load(tmp_path / f"train-images-idx3-ubyte{sfx}").labels, s.labels)  # file + sibling
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs[:2], 2051, gz)
    assert len(load(str(tmp_path), split="test")) == 2 and load(str(tmp_path), split="test").num_classes == 0
    assert len(load(str(tmp_path), split="all")) == 7


def test_idx_gzip_detected_by_magic_not_suffix(tmp_path):
    _write_idx(tmp_path / "imgs", np.full((2, 3, 3), 9, np.uint8), 2051, gz=True)
    s = load(str(tmp_path / "imgs"))
    assert s.images.shape == (2, 3, 3, 1) and (s.images == 9).all() and (s.labels == -1).all()


def test_mnist_idx_errors(tmp_path):
    imgs = np.zeros((2, 4, 4), np.uint8)
    _write_idx(tmp_path / "bad-magic", imgs, 1234)
    one_line_error(lambda: load_mnist_idx(tmp_path / "bad-magic"), "bad-magic", "expected idx magic 2051, got 1234")
    one_line_error(lambda: load(str(tmp_path / "bad-magic")), "bad-magic", "expected idx magic 2051, got 1234")
    _write_idx(tmp_path / "trunc", imgs, 2051)
    (tmp_path / "trunc").write_bytes((tmp_path / "trunc").read_bytes()[:-3])
    one_line_error(lambda: load_mnist_idx(tmp_path / "trunc"), "trunc", "truncated", "32 bytes, file has 29")
    (tmp_path / "head").write_bytes(struct.pack(">II", 2051, 2))
    one_line_error(lambda: load_mnist_idx(tmp_path / "head"), "head", "truncated")
    (tmp_path / "badgz").write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 20)
    one_line_error(lambda: load_mnist_idx(tmp_path / "badgz"), "badgz", "gzip")
    _write_idx(tmp_path / "ok", imgs, 2051)
    _write_idx(tmp_path / "labs", np.zeros(3, np.uint8), 2049)
    one_line_error(lambda: load_mnist_idx(tmp_path / "ok", tmp_path / "labs"), "labs", "3 labels for 2 images")
    one_line_error(lambda: load_mnist_idx(tmp_path / "labs"), "labs", "got 2049")
    one_line_error(lambda: load(str(tmp_path / "labs")), "labs", "labels file")
    one_line_error(lambda: load_mnist_idx(tmp_path / "absent"), "absent", "no such file")
    _write_idx(tmp_path / "train-images-idx3-ubyte", imgs, 2051)
    one_line_error(lambda: load(str(tmp_path), split="test"), str(tmp_path), "t10k-images-idx3-ubyte")


# --- CIFAR-10 python batches --------------------------------------------------------------

def _write_cifar_batch(path, n=4, protocol=pickle.DEFAULT_PROTOCOL, labels=None):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": data,
                     b"labels": list(range(n)) if labels is None else labels}, f, protocol=protocol)
    return data


def test_cifar_batches_round_trip(tmp_path):
    d1 = _write_cifar_batch(tmp_path / "data_batch_1")
    _write_cifar_batch(tmp_path / "test_batch", 2)
    s = load_cifar10(tmp_path, "train")
    assert s.images.shape == (4, 32, 32, 3) and s.labels.tolist() == [0, 1, 2, 3] and s.num_classes == 10
    # channel-major rows: pixel (0, 0) of image 0 is data[0, 0], data[0, 1024], data[0, 2048]
    assert s.images[0, 0, 0].tolist() == [d1[0, 0], d1[0, 1024], d1[0, 2048]]
    assert s.images[0, 1, 2, 1] == d1[0, 1024 + 32 + 2]
    assert len(load(str(tmp_path), split="test")) == 2 and len(load(str(tmp_path), split="all")) == 6
    assert len(load(str(tmp_path / "test_batch"))) == 2                                # a single batch file
    assert load(str(tmp_path), resolution=8).images.shape == (4, 8, 8, 3)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_protocols_and_numpy_labels(tmp_path, protocol):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    _write_cifar_batch(root / "test_batch", 3, protocol, labels=np.array([7, 8, 9]))
    s = load(str(tmp_path), split="test")                                            # the folder above it
    assert s.labels.tolist() == [7, 8, 9] and s.images.shape == (3, 32, 32, 3)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_cifar_pickle_with_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    one_line_error(lambda: load_cifar10(tmp_path / "data_batch_1"), "data_batch_1", "forbidden global")
    one_line_error(lambda: load(str(tmp_path)), "data_batch_1", "forbidden global")
    (tmp_path / "p0").write_bytes(b"cos\nsystem\n(S'touch PWNED'\ntR.")                 # protocol 0 GLOBAL
    one_line_error(lambda: load_cifar10(tmp_path / "p0"), "p0", "forbidden global os.system")
    (tmp_path / "bi").write_bytes(pickle.dumps({b"data": eval}, protocol=2))          # builtins.eval
    one_line_error(lambda: load_cifar10(tmp_path / "bi"), "bi", "forbidden global", "eval")
    assert not (tmp_path / "PWNED").exists()


def test_cifar_errors(tmp_path):
    with open(tmp_path / "nodata", "wb") as f:
        pickle.dump({b"labels": [0]}, f)
    one_line_error(lambda: load_cifar10(tmp_path / "nodata"), "nodata", "b'data'")
    with open(tmp_path / "shape", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    one_line_error(lambda: load_cifar10(tmp_path / "shape"), "shape", "N×3072")
    _write_cifar_batch(tmp_path / "count", 3, labels=[0, 1])
    one_line_error(lambda: load_cifar10(tmp_path / "count"), "count", "3 integers")
    (tmp_path / "trunc").write_bytes((tmp_path / "count").read_bytes()[:60])
    one_line_error(lambda: load_cifar10(tmp_path / "trunc"), "trunc", "not a CIFAR-10 python batch")
    empty = tmp_path / "e"
    empty.mkdir()
    _write_cifar_batch(empty / "data_batch_1")
    one_line_error(lambda: load_cifar10(empty, "test"), str(empty), "split 'test'")


# --- image folders ------------------------------------------------------------------------

def _png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder(tmp_path):
    for c, v in [("cat", 10), ("dog", 200)]:
        for i in range(2):
            _png(tmp_path / c / f"{i}.png", np.full((6, 5), v + i, np.uint8))
    (tmp_path / ".ipynb_checkpoints").mkdir()                                       # hidden: not a class
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    s = load_image_folder(tmp_path)
    assert s.images.shape == (4, 6, 5, 1) and s.labels.tolist() == [0, 0, 1, 1] and s.num_classes == 2
    assert s.classes == ("cat", "dog") and s.images[3, 0, 0, 0] == 201
    assert np.array_equal(load(str(tmp_path), resolution=8).images.shape, (4, 8, 8, 1))
    # one colour image makes the whole set RGB, grey replicated
    _png(tmp_path / "dog" / "2.png", np.full((6, 5, 3), [1, 2, 3], np.uint8))
    s = load_image_folder(tmp_path)
    assert s.images.shape == (5, 6, 5, 3) and s.images[0, 0, 0].tolist() == [10, 10, 10]
    assert s.images[4, 0, 0].tolist() == [1, 2, 3]
    _png(tmp_path / "dog" / "odd.png", np.zeros((5, 5), np.uint8))
    one_line_error(lambda: load_image_folder(tmp_path), "odd.png", "size 5×5", "expected 5×6")
    (tmp_path / "dog" / "odd.png").write_bytes(b"not a png")
    one_line_error(lambda: load_image_folder(tmp_path), "odd.png", "not a readable image")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: load_image_folder(tmp_path / "empty"), "empty", "no images")
    one_line_error(lambda: load_image_folder(tmp_path / "missing"), "missing", "no such folder")


def test_flat_image_folder_and_16_bit(tmp_path):
    _png(tmp_path / "a.png", np.full((3, 3), 65535, np.uint16))
    _png(tmp_path / "b.PNG", np.full((3, 3), 0x8080, np.uint16))
    s = load(str(tmp_path))
    assert s.labels.tolist() == [-1, -1] and s.num_classes == 0 and s.classes == ()
    assert s.images[:, 0, 0, 0].tolist() == [255, 128]                          # scaled, not clipped
    _png(tmp_path / "cls" / "c.png", np.zeros((3, 3), np.uint8))
    one_line_error(lambda: load(str(tmp_path)), "a.png", "beside class folders")


def test_image_folder_split_layout_shares_classes(tmp_path):
    for split, classes in [("train", ["ant", "bee", "cow"]), ("test", ["ant", "cow"])]:
        for c in classes:
            _png(tmp_path / split / c / "0.png", np.full((4, 4), len(c), np.uint8))
    tr, te = load(str(tmp_path)), load(str(tmp_path), split="test")
    assert tr.labels.tolist() == [0, 1, 2] and te.labels.tolist() == [0, 2]          # "cow" is 2 in both
    assert tr.num_classes == te.num_classes == 3 and te.classes == ("ant", "bee", "cow") and te.name == tmp_path.name
    assert len(load(str(tmp_path), split="all")) == 5


# --- .npz ---------------------------------------------------------------------------------

def test_npz_round_trip_and_errors(tmp_path):
    imgs = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    np.savez(tmp_path / "ok.npz", images=imgs, labels=np.array([1, 0]))
    s = load_npz(tmp_path / "ok.npz")
    assert np.array_equal(s.images, imgs) and s.labels.tolist() == [1, 0] and s.num_classes == 2 and s.name == "ok"
    assert load(str(tmp_path / "ok.npz"), resolution=8).images.shape == (2, 8, 8, 3)
    np.savez(tmp_path / "gray.npz", images=imgs[..., 0])
    g = load(tmp_path / "gray.npz")
    assert g.images.shape == (2, 4, 4, 1) and g.labels.tolist() == [-1, -1] and g.num_classes == 0
    cases = {
        "noimg.npz": (dict(pictures=imgs), "'images'"),
        "float.npz": (dict(images=imgs.astype(np.float32)), "uint8"),
        "count.npz": (dict(images=imgs, labels=np.array([1, 2, 3])), "labels"),
        "neg.npz": (dict(images=imgs, labels=np.array([-2, 0])), ">= -1"),
        "rgba.npz": (dict(images=np.zeros((1, 2, 2, 4), np.uint8)), "C 1 or 3"),
        "none.npz": (dict(images=np.zeros((0, 2, 2), np.uint8)), "no images"),
        "obj.npz": (dict(images=np.array([None, 1], dtype=object)), "allow_pickle"),
    }
    for name, (arrays, needle) in cases.items():
        np.savez(tmp_path / name, **arrays)
        one_line_error(lambda: load_npz(tmp_path / name), name, needle)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    one_line_error(lambda: load_npz(tmp_path / "junk.npz"), "junk.npz")
    (tmp_path / "badzip.npz").write_bytes(b"PK\x03\x04" + b"\0" * 30)
    one_line_error(lambda: load(str(tmp_path / "badzip.npz")), "badzip.npz", "not a readable .npz")
    np.save(tmp_path / "single.npy", imgs)
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    one_line_error(lambda: load_npz(tmp_path / "single.npz"), "single.npz", ".npy")


# --- the entry point ----------------------------------------------------------------------

def test_load_dispatch_digits_and_errors(tmp_path):
    d = load("digits", split="test")
    assert d.images.shape[1:] == (16, 16, 1) and d.content_hash() == resize(load_digits(8, "test"), 16).content_hash()
    assert load("digits", resolution=8, split="all").images.shape == (1797, 8, 8, 1)
    one_line_error(lambda: load(str(tmp_path / "missing")), "missing", "no such file or folder")
    one_line_error(lambda: load("digits", split="val"), "split", "val")
    one_line_error(lambda: load("digits", resolution=3), "resolution")
    one_line_error(lambda: load(None), "expected 'digits' or a path")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    one_line_error(lambda: load(str(tmp_path / "pic.png")), "pic.png", "not a recognised data file", "folder")
    (tmp_path / "text.txt").write_text("hello\nworld")
    one_line_error(lambda: load(Path(tmp_path / "text.txt")), "text.txt", "not a recognised data file")
