"""Loaders: the embedded digits, MNIST idx, CIFAR-10 python batches, image folders and .npz.

Each returns an :class:`ImageSet`; each bad input raises :class:`InputError` with one line
naming the file and what was wrong.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from ..errors import InputError
from .imageset import ImageSet

SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Bilinear resize of uint8 N×H×W×C to resolution×resolution (PIL, per image)."""
    from PIL import Image

    if images.shape[1] == resolution and images.shape[2] == resolution:
        return images
    out = np.empty((len(images), resolution, resolution, images.shape[-1]), np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        r = np.asarray(pil.resize((resolution, resolution), Image.BILINEAR))
        out[i] = r[..., None] if r.ndim == 2 else r
    return out


def resize(imageset: ImageSet, resolution: int) -> ImageSet:
    """The same set at resolution×resolution (bilinear)."""
    if not isinstance(resolution, int) or resolution < 4:
        raise InputError(f"resolution: expected an integer >= 4, got {resolution!r}")
    return ImageSet(_resize(imageset.images, resolution), imageset.labels, imageset.num_classes,
                    imageset.name, imageset.source)


# --- digits: scikit-learn's embedded 8×8 digits ------------------------------------------------

def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test items: ``test_fraction`` of each class, chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return test


def load_digits(resolution: int = 16, split: str = "train", seed: int = 0, test_fraction: float = 0.2) -> ImageSet:
    """scikit-learn's digits (1,797 8×8 images, values 0..16, 10 classes; shipped inside
    scikit-learn, no download) as uint8 0..255 at resolution×resolution (bilinear), 1 channel,
    with a fixed seeded stratified split (``split``: train | test | all)."""
    from sklearn.datasets import load_digits as _sk_digits

    _check_split(split)
    d = _sk_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    if split != "all":
        test = _stratified_split(labels, test_fraction, seed)
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
    s = ImageSet(images, labels, 10, "digits", "digits")
    return resize(s, resolution)


# --- MNIST idx ------------------------------------------------------------------------------

def _read_maybe_gz(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InputError(f"{path}: corrupt gzip data ({e})") from None
    return raw


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    data = _read_maybe_gz(path)
    if len(data) < 4 + 4 * ndim:
        raise InputError(f"{path}: too short for an idx header ({len(data)} bytes)")
    got = struct.unpack(">I", data[:4])[0]
    if got != magic:
        raise InputError(f"{path}: expected idx magic {magic}, got {got}")
    dims = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise InputError(f"{path}: header says {'×'.join(map(str, dims))} = {int(np.prod(dims))} bytes, file has {len(body)}")
    return np.frombuffer(body, np.uint8).reshape(dims)


def load_mnist_idx(images_path, labels_path=None) -> ImageSet:
    """MNIST-format idx files, raw or gzip: images (magic 2051, N×H×W uint8) and optionally labels
    (magic 2049, N uint8)."""
    images_path = Path(images_path)
    images = _read_idx(images_path, 2051, 3)[..., None]
    if labels_path is None:
        labels, k = np.full(len(images), -1, np.int64), 0
    else:
        labels = _read_idx(Path(labels_path), 2049, 1).astype(np.int64)
        if len(labels) != len(images):
            raise InputError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
        k = int(labels.max()) + 1 if len(labels) else 0
    return ImageSet(images.copy(), labels, k, images_path.name.split("-")[0], str(images_path))


def _mnist_folder(folder: Path, split: str) -> ImageSet:
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise InputError(f"{folder}: an MNIST folder has splits train and test, got {split!r}")
    for suffix in ("", ".gz"):
        im = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        if im.is_file():
            lab = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            s = load_mnist_idx(im, lab if lab.is_file() else None)
            return ImageSet(s.images, s.labels, s.num_classes, folder.name, str(folder))
    raise InputError(f"{folder}: no {prefix}-images-idx3-ubyte[.gz] for split {split!r}")


# --- CIFAR-10 python batches ----------------------------------------------------------------

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, bytes and NumPy arrays. Any other
    global (a function, a class that runs code) is refused before it is looked up, so no code in
    the file can run."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise InputError(f"{path}: expected a dict with b'data' and b'labels'")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"], np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise InputError(f"{path}: expected data uint8 N×3072 and N labels, got {data.dtype} {data.shape}, {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(path, split: str = "train") -> ImageSet:
    """CIFAR-10 python batches: a batch file, or a folder with ``data_batch_1..5`` (train) and
    ``test_batch`` (test). Returns uint8 N×32×32×3. The batches are pickles; they are read with an
    unpickler that rebuilds NumPy arrays and nothing else (see :class:`_ArraysOnlyUnpickler`)."""
    path = Path(path)
    _check_split(split)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        names["all"] = names["train"] + names["test"]
        files = [path / n for n in names[split] if (path / n).is_file()]
        if not files:
            raise InputError(f"{path}: no CIFAR-10 batch files for split {split!r}")
    else:
        raise InputError(f"{path}: no such file or folder")
    parts = [_read_cifar_batch(f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageSet(np.ascontiguousarray(images), labels, 10, "cifar10", str(path))


# --- image folders ------------------------------------------------------------------------

def load_image_folder(root) -> ImageSet:
    """``root/<class>/*.png|jpg|…`` (labels by sorted class name) or a flat folder of images
    (labels −1). All images must share one size; any colour image makes the set RGB."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes:
        files = [(f, k) for k, c in enumerate(classes) for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    pics = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                pics.append(im.copy())
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{f}: not a readable image ({e})") from None
    size = pics[0].size
    for (f, _), im in zip(files, pics):
        if im.size != size:
            raise InputError(f"{f}: size {im.size[0]}×{im.size[1]}, expected {size[0]}×{size[1]} like {files[0][0].name}")
    rgb = any(im.mode not in ("L", "1", "I", "I;16") for im in pics)
    arr = np.stack([np.asarray(im.convert("RGB" if rgb else "L")) for im in pics])
    if not rgb:
        arr = arr[..., None]
    labels = np.array([k for _, k in files], np.int64)
    return ImageSet(arr.astype(np.uint8), labels, len(classes), root.name, str(root))


# --- .npz ---------------------------------------------------------------------------------

def load_npz(path) -> ImageSet:
    """``.npz`` with ``images`` (uint8, N×H×W or N×H×W×C) and optionally ``labels`` (integers).
    Object arrays are refused (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as d:
            if "images" not in d.files:
                raise InputError(f"{path}: expected an array 'images', found {d.files}")
            images = d["images"]
            labels = d["labels"] if "labels" in d.files else None
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if images.dtype != np.uint8:
        raise InputError(f"{path}: expected 'images' of dtype uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InputError(f"{path}: expected 'images' N×H×W or N×H×W×C (C 1 or 3), got shape {images.shape}")
    if labels is None:
        labels, k = np.full(len(images), -1, np.int64), 0
    else:
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{path}: expected integer 'labels' [{len(images)}], got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
        k = int(labels.max()) + 1 if len(labels) else 0
    return ImageSet(np.ascontiguousarray(images), labels, k, path.stem, str(path))


# --- the one entry point --------------------------------------------------------------------

def _is_idx(path: Path) -> bool:
    try:
        head = _read_maybe_gz(path)[:4] if path.stat().st_size < 200_000_000 else b""
    except InputError:
        return False
    return len(head) == 4 and struct.unpack(">I", head)[0] == 2051


def load(spec: str, *, resolution: int | None = None, split: str = "train", seed: int = 0) -> ImageSet:
    """Load a data set: ``"digits"`` (embedded; resolution default 16) or a path — an ``.npz``, an
    MNIST idx images file, a folder of MNIST idx files or CIFAR-10 batches, a CIFAR batch file, or
    a folder of images. ``resolution`` resizes (bilinear); ``split`` is train | test | all
    (digits: a seeded stratified split; MNIST/CIFAR folders: their own files)."""
    _check_split(split)
    if spec == "digits":
        return load_digits(resolution or 16, split=split, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (expected 'digits' or a data path)")
    if path.is_file():
        if path.suffix == ".npz":
            s = load_npz(path)
        elif _is_idx(path):
            lab = Path(str(path).replace("images-idx3", "labels-idx1"))
            s = load_mnist_idx(path, lab if lab != path and lab.is_file() else None)
        else:
            s = load_cifar10(path, split)
    elif any((path / n).is_file() for n in ("data_batch_1", "test_batch")):
        s = load_cifar10(path, split)
    elif any(path.glob("*-images-idx3-ubyte*")):
        s = _mnist_folder(path, split)
    else:
        s = load_image_folder(path)
    return resize(s, resolution) if resolution else s
