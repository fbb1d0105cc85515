"""ImageSet: uint8 images + labels, the one in-memory form every loader returns."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..images import from_uint8


@dataclass(frozen=True)
class ImageSet:
    """Images as stored: ``images`` uint8 N×H×W×C (C = 1 or 3, values 0..255), ``labels`` int64 [N]
    (−1 where unlabelled), ``num_classes`` (0 if unlabelled), a ``name`` for reports and the
    ``source`` path (or "digits")."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    source: str

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise InputError(f"{self.source}: expected uint8 images N×H×W×C (C 1 or 3), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise InputError(f"{self.source}: expected {len(self.images)} labels, got shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): x float32 N×C×H×W in [0, 1], y int64 [N]."""
        return from_uint8(self.images), torch.from_numpy(self.labels.astype(np.int64))

    def subset(self, idx) -> "ImageSet":
        idx = np.asarray(idx)
        return ImageSet(self.images[idx], self.labels[idx], self.num_classes, self.name, self.source)

    def content_hash(self) -> str:
        """SHA-256 (hex) of the shapes, pixels and labels: a cache key for anything derived."""
        h = hashlib.sha256()
        h.update(repr((self.images.shape, self.labels.shape)).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels.astype(np.int64)).tobytes())
        return h.hexdigest()


class ImageDataset(Dataset):
    """A torch Dataset over an :class:`ImageSet`: item i is (C×H×W float32 in [0, 1], int label)."""

    def __init__(self, imageset: ImageSet):
        self.imageset = imageset

    def __len__(self) -> int:
        return len(self.imageset)

    def __getitem__(self, i):
        x = from_uint8(self.imageset.images[i: i + 1])[0]
        return x, int(self.imageset.labels[i])
