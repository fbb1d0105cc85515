"""Loaders: the embedded digits, MNIST idx, CIFAR-10 python batches, image folders and .npz.

Each returns an :class:`ImageSet` (uint8 N×H×W×C images, C 1 or 3, values 0..255; int64 labels,
−1 where unlabelled). Each bad input raises :class:`InputError` with one line naming the file and
what was wrong. :func:`load` is the one entry point; the others are for callers that know the
format.
"""
from __future__ import annotations

import functools
import numbers
import gzip
import operator
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from .imageset import ImageSet

SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
IDX_IMAGES_MAGIC = 2051   # 0x00000803: unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 2049   # 0x00000801: unsigned bytes, 1 dimension (N)
#: PIL modes read as grayscale; any other mode makes the whole image folder RGB
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}
#: sub-folder names that mark an image folder laid out by split (root/train/<class>/…)
_SPLIT_DIRS = {"train", "test", "val", "valid", "validation"}


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _check_split(split) -> str:
    if split not in SPLITS:
        raise InputError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _check_resolution(resolution) -> int:
    try:
        if isinstance(resolution, bool):
            raise TypeError
        r = operator.index(resolution)
    except TypeError:
        raise InputError(f"resolution: expected an integer >= 4, got {resolution!r}") from None
    if r < 4:
        raise InputError(f"resolution: expected an integer >= 4, got {r}")
    return r


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Bilinear resize of uint8 N×H×W×C to N×r×r×C (PIL per image; area-weighted when shrinking)."""
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
    """The same set at resolution×resolution (PIL bilinear, per image).

    Args:
        imageset: any ImageSet (uint8 N×H×W×C).
        resolution: the new side, an integer >= 4; non-square images are stretched to square.

    Returns:
        A new ImageSet, uint8 N×r×r×C in 0..255, same labels/num_classes/name/source/classes
        (the same object's arrays when the size already matches).
    """
    if not isinstance(imageset, ImageSet):
        raise InputError(f"resize: expected an ImageSet, got {type(imageset).__name__}")
    r = _check_resolution(resolution)
    return ImageSet(_resize(imageset.images, r), imageset.labels, imageset.num_classes,
                    imageset.name, imageset.source, imageset.classes)


# --- digits: scikit-learn's embedded 8×8 digits ------------------------------------------------

@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 N×8×8×1 (0..16 scaled to 0..255) and int64 labels; read-only."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: round(test_fraction · n_c) items of each class c, chosen by a seeded
    permutation (NumPy PCG64, classes in ascending order). tests/test_data.py pins the result."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return test


def load_digits(resolution: int = 16, split: str = "train", seed: int = 0, test_fraction: float = 0.2) -> ImageSet:
    """scikit-learn's handwritten digits, shipped inside scikit-learn (no download).

    The 1,797 8×8 images (values 0..16) are scaled to uint8 0..255 and resized bilinearly.

    Args:
        resolution: output side, an integer >= 4 (8 is the native size, returned unresized).
        split: "train", "test" or "all". The split is stratified: round(test_fraction · n_c)
            images of each class go to test; the same (seed, test_fraction) always gives the same
            split, and train and test are disjoint.
        seed: an integer >= 0 choosing the split.
        test_fraction: in (0, 1).

    Returns:
        ImageSet "digits": images uint8 N×r×r×1 in 0..255, labels int64 in 0..9, num_classes 10
        (N = 1,797 for "all"; 1,438 / 359 for train / test at the default fraction).
    """
    _check_split(split)
    r = _check_resolution(resolution)
    try:
        seed = operator.index(seed)
        if seed < 0:
            raise TypeError
    except TypeError:
        raise InputError(f"seed: expected an integer >= 0, got {seed!r}") from None
    if isinstance(test_fraction, bool) or not (isinstance(test_fraction, numbers.Real) and 0 < test_fraction < 1):
        raise InputError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    images, labels = _digits_raw()
    if split == "all":
        images, labels = images.copy(), labels.copy()
    else:
        test = _stratified_split(labels, test_fraction, seed)
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
    return resize(ImageSet(images, labels, 10, "digits", "digits"), r)


# --- MNIST idx ------------------------------------------------------------------------------

def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _head(path: Path, n: int) -> bytes:
    """The first n bytes of a file, decompressed first if it is gzip."""
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                return f.read(n)
        with open(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot read ({_first_line(e)})") from None


def _read_maybe_gz(path: Path) -> bytes:
    """The bytes of a raw or gzip file (gzip recognised by its magic 1f 8b, not the suffix)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({_first_line(e)})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"{path}: corrupt gzip data ({_first_line(e)})") from None
    return raw


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions, checked against its header."""
    data = _read_maybe_gz(path)
    if len(data) >= 4:
        got = struct.unpack(">I", data[:4])[0]
        if got != magic:
            kind = {IDX_IMAGES_MAGIC: " (an idx images file)", IDX_LABELS_MAGIC: " (an idx labels file)"}.get(got, "")
            raise InputError(f"{path}: expected idx magic {magic}, got {got}{kind}")
    if len(data) < 4 + 4 * ndim:
        raise InputError(f"{path}: truncated: {len(data)} bytes, shorter than an idx header of {4 + 4 * ndim}")
    dims = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    if ndim == 3 and 0 in dims:
        raise InputError(f"{path}: expected a non-empty N×H×W, header says {'×'.join(map(str, dims))}")
    body = data[4 + 4 * ndim:]
    need = int(np.prod(dims, dtype=np.int64))
    if len(body) != need:
        what = "truncated" if len(body) < need else "trailing bytes"
        raise InputError(f"{path}: {what}: header says {'×'.join(map(str, dims))} = {need} bytes, file has {len(body)}")
    return np.frombuffer(body, np.uint8).reshape(dims)


def _idx_name(path: Path) -> str:
    base = path.name[:-3] if path.name.endswith(".gz") else path.name
    if base.startswith(("train-", "t10k-")) and path.parent.name:
        return path.parent.name                      # data/fashion/train-images-idx3-ubyte → "fashion"
    return base.split(".")[0]


def load_mnist_idx(images_path, labels_path=None) -> ImageSet:
    """MNIST-format idx files (MNIST, Fashion-MNIST, KMNIST, …), raw or gzip (detected by content).

    Args:
        images_path: idx3-ubyte images: magic 2051, then N, H, W as big-endian uint32, then N·H·W
            bytes (0..255).
        labels_path: optional idx1-ubyte labels: magic 2049, N, then N bytes; must hold as many
            labels as there are images.

    Returns:
        ImageSet: images uint8 N×H×W×1 in 0..255; labels int64 [N] (num_classes = max + 1), or −1
        and num_classes 0 without a labels file.

    Raises:
        InputError: missing file, corrupt gzip, wrong magic, truncated or overlong body, count
            mismatch — naming the file.
    """
    images_path = Path(images_path)
    images = _read_idx(images_path, IDX_IMAGES_MAGIC, 3)[..., None].copy()
    if labels_path is None:
        labels, k = np.full(len(images), -1, np.int64), 0
    else:
        labels_path = Path(labels_path)
        labels = _read_idx(labels_path, IDX_LABELS_MAGIC, 1).astype(np.int64)
        if len(labels) != len(images):
            raise InputError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
        k = int(labels.max()) + 1
    return ImageSet(images, labels, k, _idx_name(images_path), str(images_path))


def _mnist_pair(folder: Path, prefix: str) -> tuple[Path, Path | None] | None:
    for suffix in ("", ".gz"):
        im = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        if im.is_file():
            for lsuffix in (suffix, ".gz" if suffix == "" else ""):
                lab = folder / f"{prefix}-labels-idx1-ubyte{lsuffix}"
                if lab.is_file():
                    return im, lab
            return im, None
    return None


def _idx_labels_for(images_path: Path) -> Path | None:
    """The labels file beside an images file by MNIST naming (…-images-idx3-… → …-labels-idx1-…)."""
    if "images-idx3" not in images_path.name:
        return None
    base = images_path.name.replace("images-idx3", "labels-idx1")
    base = base[:-3] if base.endswith(".gz") else base
    for name in (base, base + ".gz"):
        if (images_path.parent / name).is_file():
            return images_path.parent / name
    return None


def _concat(parts: list[ImageSet], name: str, source: str) -> ImageSet:
    shapes = {p.images.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise InputError(f"{source}: splits differ in image shape: {' vs '.join(str(p.images.shape[1:]) for p in parts)}")
    k = max(p.num_classes for p in parts)
    classes = next((p.classes for p in parts if p.classes), ())
    return ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]), k,
                    name, source, classes)


def _mnist_folder(folder: Path, split: str) -> ImageSet:
    parts = []
    for prefix in {"train": ("train",), "test": ("t10k",), "all": ("train", "t10k")}[split]:
        pair = _mnist_pair(folder, prefix)
        if pair is None:
            raise InputError(f"{folder}: no {prefix}-images-idx3-ubyte[.gz] for split {split!r}")
        parts.append(load_mnist_idx(*pair))
    return _concat(parts, folder.name, str(folder))


# --- CIFAR-10 python batches ----------------------------------------------------------------

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, strings, bytes, numbers and NumPy
    arrays/scalars/dtypes.

    Why this is safe: a pickle runs code only by naming a global (GLOBAL / STACK_GLOBAL / INST /
    OBJ opcodes, all of which go through :meth:`find_class`) and then calling it (REDUCE,
    NEWOBJ, BUILD). Every global not on :attr:`ALLOWED` is refused before it is imported or
    looked up, so ``os.system``, ``builtins.eval``, ``subprocess.Popen``, … can never be reached.
    The allowed names only build data: ``_reconstruct``/``ndarray``/``dtype``/``_frombuffer``
    create arrays from bytes, ``scalar`` a NumPy scalar, and ``_codecs.encode`` turns a str into
    bytes (how Python 3 pickles bytes at protocol < 3). Persistent ids are refused (the base class
    raises on them). Object arrays rebuilt this way hold only objects that passed the same check,
    and the result is then required to be uint8 data and integer labels.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch → (uint8 N×32×32×3, int64 [N] in 0..9)."""
    try:
        with open(path, "rb") as f:
            d = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 — hostile bytes can raise anything; no code ran
        raise InputError(f"{path}: not a CIFAR-10 python batch ({_first_line(e)})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        keys = sorted(map(repr, d))[:6] if isinstance(d, dict) else type(d).__name__
        raise InputError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    data = d[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{path}: expected b'data' uint8 N×3072, got {got}")
    try:
        labels = np.asarray(d[b"labels"])
        ok = labels.shape == (len(data),) and np.issubdtype(labels.dtype, np.integer)
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        raise InputError(f"{path}: expected b'labels' a list of {len(data)} integers")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise InputError(f"{path}: expected labels in 0..9, got {labels.min()}..{labels.max()}")
    # rows are channel-major: 1024 R, then 1024 G, then 1024 B, each row-major 32×32
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _cifar_dir(path: Path) -> Path:
    sub = path / "cifar-10-batches-py"
    return sub if sub.is_dir() else path


def load_cifar10(path, split: str = "train") -> ImageSet:
    """CIFAR-10 "python version" batches.

    Args:
        path: one batch file (``split`` is then ignored), or the ``cifar-10-batches-py`` folder (or
            the folder holding it) with ``data_batch_1..5`` (train: those present) and
            ``test_batch`` (test); "all" is train then test.
        split: "train", "test" or "all".

    Returns:
        ImageSet "cifar10": images uint8 N×32×32×3 (RGB) in 0..255, labels int64 in 0..9,
        num_classes 10.

    The batches are pickles. They are read with :class:`_ArraysOnlyUnpickler`, which can rebuild
    NumPy arrays and nothing else, so a file holding code is refused (InputError, "forbidden
    global …") before any of it runs.
    """
    path = Path(path)
    _check_split(split)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        folder = _cifar_dir(path)
        names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        names["all"] = names["train"] + names["test"]
        files = [folder / n for n in names[split] if (folder / n).is_file()]
        if not files:
            raise InputError(f"{path}: no CIFAR-10 batch files ({', '.join(names[split][:1])}…) for split {split!r}")
    else:
        raise InputError(f"{path}: no such file or folder")
    parts = [_read_cifar_batch(f) for f in files]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    if not len(images):
        raise InputError(f"{path}: the CIFAR-10 batches hold no images")
    return ImageSet(images, labels, 10, "cifar10", str(path))


# --- image folders ------------------------------------------------------------------------

def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if _visible(f) and f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _pil_to_array(im, rgb: bool) -> np.ndarray:
    """A PIL image → uint8 H×W (grayscale) or H×W×3; 16-bit grayscale is scaled, not clipped."""
    if im.mode.startswith("I"):
        a = np.asarray(im).astype(np.int64)
        if im.mode != "I" or a.max() > 255:     # 16-bit samples → 0..255
            a = (a.clip(0, 65535) * 255 + 32767) // 65535
        g = a.clip(0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1) if rgb else g
    return np.asarray(im.convert("RGB" if rgb else "L"), dtype=np.uint8)


def load_image_folder(root, classes=None) -> ImageSet:
    """A folder of images (.png, .jpg, .jpeg, .bmp, .webp; hidden files and folders skipped).

    Layouts: ``root/<class_name>/*.png`` → labels 0..K−1 by sorted class-folder name; or a flat
    ``root/*.png`` → labels −1, num_classes 0. Both at once is refused (it is ambiguous).

    Args:
        root: the folder.
        classes: optional class names fixing the label order (label = position), e.g. shared by a
            train and a test folder; every class folder must be one of them.

    Returns:
        ImageSet named after the folder: images uint8 N×H×W×1 if every image is grayscale, else
        N×H×W×3 (grayscale ones replicated to RGB; alpha dropped; 16-bit grayscale scaled to
        0..255); labels int64; ``classes`` the class names. Files are in sorted order.

    Raises:
        InputError: no such folder, no images, an unreadable image, or sizes that differ — naming
            the first offending file.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    subdirs = sorted(p.name for p in root.iterdir() if _visible(p) and p.is_dir())
    loose = _image_files(root)
    if classes is not None:
        classes = [str(c) for c in classes]
        stray = [d for d in subdirs if d not in classes]
        if stray:
            raise InputError(f"{root / stray[0]}: class folder not among the classes {classes}")
    elif subdirs:
        classes = subdirs
    if classes and loose:
        raise InputError(f"{loose[0]}: an image beside class folders in {root} (expected root/<class>/*.png "
                         "or a flat folder of images, not both)")
    if classes:
        files = [(f, k) for k, c in enumerate(classes) if (root / c).is_dir() for f in _image_files(root / c)]
    else:
        files = [(f, -1) for f in loose]
    if not files:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")

    bad = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)
    size, first, rgb = None, files[0][0], False       # pass 1: headers only (size, mode)
    for f, _ in files:
        try:
            with Image.open(f) as im:
                fsize, mode = im.size, im.mode
        except bad as e:
            raise InputError(f"{f}: not a readable image ({_first_line(e)})") from None
        if size is None:
            size = fsize
        elif fsize != size:
            raise InputError(f"{f}: size {fsize[0]}×{fsize[1]}, expected {size[0]}×{size[1]} like {first.name} "
                             "(resize the folder first; all images must have one size)")
        rgb = rgb or mode not in _GRAY_MODES
    w, h = size
    out = np.empty((len(files), h, w, 3 if rgb else 1), np.uint8)
    for i, (f, _) in enumerate(files):                # pass 2: decode
        try:
            with Image.open(f) as im:
                a = _pil_to_array(im, rgb)
        except bad as e:
            raise InputError(f"{f}: not a readable image ({_first_line(e)})") from None
        out[i] = a if rgb else a[..., None]
    labels = np.array([k for _, k in files], np.int64)
    k = len(classes) if classes else 0
    return ImageSet(out, labels, k, root.name, str(root), tuple(classes) if classes else ())


def _split_layout(path: Path) -> bool:
    """root/train/… and/or root/test/… (and nothing but split folders at the top)."""
    subdirs = {p.name for p in path.iterdir() if _visible(p) and p.is_dir()}
    return bool(subdirs & {"train", "test"}) and subdirs <= _SPLIT_DIRS and not _image_files(path)


def _split_image_folder(root: Path, split: str) -> ImageSet:
    names = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}[split]
    for n in names:
        if not (root / n).is_dir():
            raise InputError(f"{root}: no {n}/ folder for split {split!r}")
    # one class list for both splits, so that a label means the same class in each
    classes = sorted({p.name for n in ("train", "test") if (root / n).is_dir()
                      for p in (root / n).iterdir() if _visible(p) and p.is_dir()})
    parts = [load_image_folder(root / n, classes or None) for n in names]
    if len({p.channels for p in parts}) > 1:                      # one colour split makes both RGB
        parts = [ImageSet(np.repeat(p.images, 3, axis=-1) if p.channels == 1 else p.images, p.labels,
                          p.num_classes, p.name, p.source, p.classes) for p in parts]
    return _concat(parts, root.name, str(root / names[0]) if len(names) == 1 else str(root))


# --- .npz ---------------------------------------------------------------------------------

def load_npz(path) -> ImageSet:
    """A NumPy ``.npz`` archive, read with ``allow_pickle=False`` (object arrays are refused).

    Args:
        path: the archive, holding ``images`` (uint8, N×H×W or N×H×W×C with C 1 or 3, values
            0..255, N >= 1) and optionally ``labels`` (integers [N], each >= −1).

    Returns:
        ImageSet named after the file stem: images uint8 N×H×W×C; labels int64 (num_classes =
        max + 1), or −1 and num_classes 0 without ``labels``.

    Raises:
        InputError: missing or unreadable file, no ``images``, wrong dtype or shape, or a label
            count that differs from the image count — naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        d = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 — zipfile, zlib, pickle refusals, OS errors
        raise InputError(f"{path}: not a readable .npz ({_first_line(e)})") from None
    if not isinstance(d, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: expected an .npz archive (np.savez), got a single .npy array")
    with d:
        if "images" not in d.files:
            raise InputError(f"{path}: expected an array 'images', found {d.files}")
        try:
            images = d["images"]
            labels = d["labels"] if "labels" in d.files else None
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: not a readable .npz ({_first_line(e)})") from None
    if images.dtype != np.uint8:
        raise InputError(f"{path}: expected 'images' of dtype uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape[1:3]:
        raise InputError(f"{path}: expected 'images' N×H×W or N×H×W×C (C 1 or 3), got shape {images.shape}")
    if not len(images):
        raise InputError(f"{path}: 'images' holds no images")
    if labels is None:
        labels, k = np.full(len(images), -1, np.int64), 0
    else:
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{path}: expected integer 'labels' [{len(images)}], got {labels.dtype} {labels.shape}")
        if labels.min() < -1:
            raise InputError(f"{path}: expected 'labels' >= -1 (-1 = unlabelled), got {labels.min()}")
        labels = labels.astype(np.int64)
        k = int(labels.max()) + 1
    return ImageSet(np.ascontiguousarray(images), labels, k, path.stem, str(path))


# --- the one entry point --------------------------------------------------------------------

def _load_file(path: Path, split: str) -> ImageSet:
    head = _head(path, 4)
    with open(path, "rb") as f:
        raw = f.read(4)
    if path.suffix.lower() == ".npz" or raw.startswith(b"PK\x03\x04"):
        return load_npz(path)
    if len(head) == 4 and head[:2] == b"\0\0":           # idx: 0, 0, type, ndim
        magic = struct.unpack(">I", head)[0]
        if magic == IDX_LABELS_MAGIC:
            raise InputError(f"{path}: an idx labels file (magic 2049); give the images file (magic 2051)")
        return load_mnist_idx(path, _idx_labels_for(path))  # a wrong magic is reported there
    if raw[:1] == b"\x80":                                 # a pickle, protocol >= 2
        return load_cifar10(path, split)
    hint = "; for images, give the folder that holds them" if path.suffix.lower() in IMAGE_SUFFIXES else ""
    raise InputError(f"{path}: not a recognised data file (expected .npz, MNIST idx images, a CIFAR-10 python "
                     f"batch, or a folder){hint}")


#: optional prefixes naming what a path holds (``cifar10:PATH``); the path's contents decide anyway
KINDS = ("cifar10", "mnist", "npz", "folder")


def _strip_kind(spec: str) -> str:
    kind, sep, rest = spec.partition(":")
    return rest if sep and kind in KINDS and rest else spec


def load(spec, *, resolution: int | None = None, split: str = "train", seed: int = 0) -> ImageSet:
    """Load a data set by name or path; the one entry point.

    Args:
        spec: ``"digits"`` (always the embedded set; write ``./digits`` for a folder of that name)
            or a path, optionally prefixed by what it holds (``cifar10:PATH``, ``mnist:PATH``):
            * a file: ``.npz`` (:func:`load_npz`); an MNIST idx images file, raw or gzip, by its
              magic number, with the ``…-labels-idx1-ubyte[.gz]`` beside it if present; a
              CIFAR-10 python batch;
            * a folder: CIFAR-10 batches (``data_batch_1``…/``test_batch``, or a
              ``cifar-10-batches-py`` folder inside); MNIST idx files
              (``train-images-idx3-ubyte[.gz]`` / ``t10k-…``); an image folder laid out by split
              (``train/<class>/…``, ``test/<class>/…``, one class list for both); otherwise an
              image folder (:func:`load_image_folder`).
        resolution: resize to resolution×resolution (bilinear) if given and different; digits
            default to 16.
        split: "train", "test" or "all". Digits: a seeded stratified split. MNIST, CIFAR and
            split-layout folders: their own train/test files. A single file or a plain image folder
            has no split: the path is the selection and ``split`` is ignored.
        seed: the digits split seed (an integer >= 0); unused otherwise.

    Returns:
        ImageSet: images uint8 N×H×W×C (C 1 or 3) in 0..255, labels int64 (−1 where unlabelled).
        Use ``.tensors()`` for float32 N×C×H×W in [0, 1].

    Raises:
        InputError: one line naming the file and what was wrong.
    """
    _check_split(split)
    if resolution is not None:
        resolution = _check_resolution(resolution)
    if isinstance(spec, str) and spec == "digits":
        return load_digits(resolution or 16, split=split, seed=seed)
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise InputError(f"data: expected 'digits' or a path, got {spec!r}")
    path = Path(_strip_kind(str(spec)))
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (expected 'digits' or a data path)")
    if path.is_file():
        s = _load_file(path, split)
    elif not path.is_dir():
        raise InputError(f"{path}: not a file or folder")
    elif any((_cifar_dir(path) / n).is_file() for n in ("data_batch_1", "test_batch")):
        s = load_cifar10(path, split)
    elif any(path.glob("*-images-idx3-ubyte")) or any(path.glob("*-images-idx3-ubyte.gz")):
        s = _mnist_folder(path, split)
    elif _split_layout(path):
        s = _split_image_folder(path, split)
    else:
        s = load_image_folder(path)
    return resize(s, resolution) if resolution else s
