"""Data order: an endless stream of per-epoch permutations, resumable at any position."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..images import check_images


def check_data(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(x, y)``: x float N×C×H×W in [0, 1], y int64 labels of shape [N]."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise InputError(f"data: expected a tuple (x, y), got {type(data).__name__}")
    x, y = data
    check_images(x, name="data x")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"data y: expected int64 labels of shape ({x.shape[0]},), got {got}")
    if x.shape[0] == 0:
        raise InputError("data: expected at least one example, got 0")
    return x, y


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: a permutation [n] from ``Generator().manual_seed(seed + epoch)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


class DataStream:
    """Indices taken in order from the concatenation of per-epoch permutations.

    A batch may straddle two epochs, so every example is seen once per epoch whatever the batch
    size. ``position`` (epoch, offset) is all a checkpoint needs to continue exactly.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, offset: int = 0):
        if not 0 <= offset < n:
            raise InputError(f"data position: offset {offset} outside an epoch of {n} examples")
        self.n, self.seed, self.epoch, self.offset = n, seed, epoch, offset
        self._perm = epoch_permutation(n, seed, epoch)

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def take(self, k: int) -> torch.Tensor:
        """The next ``k`` indices (int64 [k])."""
        parts = []
        while k > 0:
            chunk = self._perm[self.offset: self.offset + k]
            parts.append(chunk)
            k -= len(chunk)
            self.offset += len(chunk)
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = epoch_permutation(self.n, self.seed, self.epoch)
        return torch.cat(parts)
