"""Data loaders: round trips through files written here, determinism of the digits split, and a
one-line InputError naming the file for each malformed input."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from trustdiff.data import (ImageDataset, load, load_cifar10, load_digits, load_image_folder, load_mnist_idx,
                            load_npz, resize)
from trustdiff.errors import InputError


def test_digits_shapes_range_and_seeded_split():
    tr, te = load_digits(16, "train", seed=0), load_digits(16, "test", seed=0)
    assert tr.images.shape[1:] == (16, 16, 1) and tr.images.dtype == np.uint8 and tr.images.max() == 255
    assert len(tr) + len(te) == 1797 and tr.num_classes == 10
    assert set(np.unique(te.labels)) == set(range(10))
    # disjoint: no test image appears in train
    trs = {im.tobytes() for im in load_digits(8, "train").images}
    assert not any(im.tobytes() in trs for im in load_digits(8, "test").images)
    # the same seed gives the same split; another seed another
    assert np.array_equal(load_digits(8, "test", seed=0).labels, load_digits(8, "test", seed=0).labels)
    assert not np.array_equal(load_digits(8, "test", seed=0).images, load_digits(8, "test", seed=1).images)
    x, y = tr.tensors()
    assert x.shape == (len(tr), 1, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64


def test_digits_at_native_resolution_are_the_sklearn_pixels():
    from sklearn.datasets import load_digits as sk

    a = load_digits(8, "all")
    assert np.array_equal(a.images[..., 0], np.round(sk().images * 255 / 16).astype(np.uint8))


def test_resize_and_dataset_items():
    s = resize(load_digits(8, "test"), 12)
    assert s.images.shape[1:] == (12, 12, 1)
    x, y = ImageDataset(s)[3]
    assert x.shape == (1, 12, 12) and isinstance(y, int)
    with pytest.raises(InputError):
        resize(s, 2)


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
    assert np.array_equal(s.images[..., 0], imgs) and s.labels.tolist() == labs.tolist()
    assert np.array_equal(load(str(tmp_path)).images, s.images)                      # a folder of idx files
    assert np.array_equal(load(str(tmp_path / f"train-images-idx3-ubyte{sfx}")).labels, s.labels)


def test_mnist_idx_errors(tmp_path):
    imgs = np.zeros((2, 4, 4), np.uint8)
    _write_idx(tmp_path / "bad-magic", imgs, 1234)
    with pytest.raises(InputError, match="bad-magic.*expected idx magic 2051, got 1234"):
        load_mnist_idx(tmp_path / "bad-magic")
    _write_idx(tmp_path / "trunc", imgs, 2051)
    (tmp_path / "trunc").write_bytes((tmp_path / "trunc").read_bytes()[:-3])
    with pytest.raises(InputError, match="trunc"):
        load_mnist_idx(tmp_path / "trunc")
    _write_idx(tmp_path / "ok", imgs, 2051)
    _write_idx(tmp_path / "labs", np.zeros(3, np.uint8), 2049)
    with pytest.raises(InputError, match="labs.*3 labels for 2 images"):
        load_mnist_idx(tmp_path / "ok", tmp_path / "labs")


def _write_cifar_batch(path, n=4):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": list(range(n))}, f)
    return data


def test_cifar_batches_round_trip(tmp_path):
    d1 = _write_cifar_batch(tmp_path / "data_batch_1")
    _write_cifar_batch(tmp_path / "test_batch", 2)
    s = load_cifar10(tmp_path, "train")
    assert s.images.shape == (4, 32, 32, 3) and s.labels.tolist() == [0, 1, 2, 3]
    # channel-major rows: pixel (0, 0) of image 0 is data[0, 0], data[0, 1024], data[0, 2048]
    assert s.images[0, 0, 0].tolist() == [d1[0, 0], d1[0, 1024], d1[0, 2048]]
    assert len(load(str(tmp_path), split="test")) == 2


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_cifar_pickle_with_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(InputError, match="data_batch_1.*forbidden global"):
        load_cifar10(tmp_path / "data_batch_1")
    assert not (tmp_path / "PWNED").exists()


def test_image_folder(tmp_path):
    from PIL import Image

    for c, v in [("cat", 10), ("dog", 200)]:
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 6), v + i, np.uint8)).save(tmp_path / c / f"{i}.png")
    s = load_image_folder(tmp_path)
    assert s.images.shape == (4, 6, 6, 1) and s.labels.tolist() == [0, 0, 1, 1] and s.num_classes == 2
    assert s.images[3, 0, 0, 0] == 201
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(InputError, match="odd.png.*size 5×5"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        load_image_folder(tmp_path / "empty")


def test_npz_round_trip_and_errors(tmp_path):
    imgs = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    np.savez(tmp_path / "ok.npz", images=imgs, labels=np.array([1, 0]))
    s = load_npz(tmp_path / "ok.npz")
    assert np.array_equal(s.images, imgs) and s.labels.tolist() == [1, 0] and s.num_classes == 2
    assert load(str(tmp_path / "ok.npz"), resolution=8).images.shape == (2, 8, 8, 3)
    np.savez(tmp_path / "noimg.npz", pictures=imgs)
    with pytest.raises(InputError, match="noimg.npz.*'images'"):
        load_npz(tmp_path / "noimg.npz")
    np.savez(tmp_path / "float.npz", images=imgs.astype(np.float32))
    with pytest.raises(InputError, match="float.npz.*uint8"):
        load_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "count.npz", images=imgs, labels=np.array([1, 2, 3]))
    with pytest.raises(InputError, match="count.npz.*labels"):
        load_npz(tmp_path / "count.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")


def test_load_errors_are_one_line(tmp_path):
    for call in (lambda: load(str(tmp_path / "missing")), lambda: load("digits", split="val")):
        with pytest.raises(InputError) as e:
            call()
        assert "\n" not in str(e.value)
    assert "missing" in str(pytest.raises(InputError, load, str(tmp_path / "missing")).value)


def test_content_hash_tracks_content():
    a, b = load_digits(8, "test"), load_digits(8, "test")
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != a.subset(np.arange(len(a) - 1)).content_hash()
