"""ImageSet: uint8 images + labels, the one in-memory form every loader returns."""
from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..images import from_uint8


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A data set as stored on disk, validated on construction.

    Attributes:
        images: uint8 array N×H×W×C, C = 1 (grayscale) or 3 (RGB), values 0..255. An N×H×W
            array is accepted and given a channel axis.
        labels: int64 array [N], values in 0..num_classes−1, or −1 where unlabelled. Any integer
            dtype is accepted and converted to int64.
        num_classes: K ≥ 0 (0 for an unlabelled set).
        name: a short name for reports ("digits", "cifar10", a folder or file stem).
        source: where it came from: a path, or "digits".
        classes: class names by label (image folders), or () where the source has none.

    Equality is identity (arrays do not compare as one truth value); use :meth:`content_hash`.

    Raises:
        InputError: when an array has the wrong dtype/shape or a label is out of range.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    source: str
    classes: tuple = ()

    def __post_init__(self):
        im, lab, src = self.images, self.labels, self.source
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8:
            got = im.dtype if isinstance(im, np.ndarray) else type(im).__name__
            raise InputError(f"{src}: expected uint8 images N×H×W×C, got {got}")
        if im.ndim == 3:
            im = im[..., None]
        if im.ndim != 4 or im.shape[-1] not in (1, 3) or 0 in im.shape[1:3]:
            raise InputError(f"{src}: expected uint8 images N×H×W×C with C 1 or 3, got shape {im.shape}")
        lab = np.asarray(lab)
        if not (np.issubdtype(lab.dtype, np.integer) and lab.shape == (len(im),)):
            raise InputError(f"{src}: expected {len(im)} integer labels, got {lab.dtype} {lab.shape}")
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise InputError(f"{src}: expected num_classes an integer >= 0, got {k!r}")
        if len(lab) and (lab.min() < -1 or lab.max() >= k):
            raise InputError(f"{src}: expected labels in -1..{k - 1} (num_classes {k}), got {lab.min()}..{lab.max()}")
        if self.classes and len(self.classes) != k:
            raise InputError(f"{src}: {len(self.classes)} class names for num_classes {k}")
        object.__setattr__(self, "images", im)
        object.__setattr__(self, "labels", lab.astype(np.int64, copy=False))
        object.__setattr__(self, "num_classes", int(k))
        object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        return f"ImageSet(name={self.name!r}, n={n}, {h}×{w}×{c}, num_classes={self.num_classes}, source={self.source!r})"

    @property
    def resolution(self) -> int:
        """H (images from the loaders are square once resized)."""
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        """C: 1 or 3."""
        return int(self.images.shape[-1])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: x float32 N×C×H×W in [0, 1] (via :func:`trustdiff.images.from_uint8`),
        y int64 [N] (−1 where unlabelled). A new copy each call."""
        return from_uint8(self.images), torch.from_numpy(self.labels.copy())

    def subset(self, idx) -> "ImageSet":
        """The items at ``idx`` (integer indices, or a boolean mask of length N), in that order,
        as a new ImageSet with the same num_classes, name, source and classes."""
        idx = np.atleast_1d(np.asarray(idx))
        if idx.size == 0:
            idx = idx.astype(np.intp)
        if idx.dtype == bool and idx.shape != (len(self),):
            raise InputError(f"subset: expected a boolean mask of length {len(self)}, got shape {idx.shape}")
        if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"subset: expected integer indices or a boolean mask, got {idx.dtype}")
        try:
            images, labels = self.images[idx], self.labels[idx]
        except IndexError as e:
            raise InputError(f"subset of {len(self)} items: {e}") from None
        return ImageSet(images, labels, self.num_classes, self.name, self.source, self.classes)

    def content_hash(self) -> str:
        """SHA-256 (64 hex characters) of the shapes, pixels and labels: a cache key for anything
        derived from the data. Independent of name, source and num_classes."""
        h = hashlib.sha256()
        h.update(repr((self.images.shape, self.labels.shape)).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels.astype(np.int64)).tobytes())
        return h.hexdigest()


class ImageDataset(Dataset):
    """A torch Dataset over an :class:`ImageSet`.

    Item ``i`` (negative counts from the end) is ``(x, y)``: x float32 C×H×W in [0, 1], y a
    Python int (−1 where unlabelled). Out-of-range indices raise IndexError, as a sequence does.
    """

    def __init__(self, imageset: ImageSet):
        if not isinstance(imageset, ImageSet):
            raise InputError(f"ImageDataset: expected an ImageSet, got {type(imageset).__name__}")
        self.imageset = imageset

    def __len__(self) -> int:
        return len(self.imageset)

    def __getitem__(self, i):
        n = len(self.imageset)
        j = operator.index(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"index {i} out of range for {n} items")
        x = from_uint8(self.imageset.images[j: j + 1])[0]
        return x, int(self.imageset.labels[j])
