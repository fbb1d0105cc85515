"""Batches that mix real and generated images in a set proportion (Gowal et al. 2021; Wang et al.
2023 use 0.3 real / 0.7 generated).

The training data is the concatenation [real; generated]: indices 0…n_real−1 are real, the rest
generated. Every batch of B takes round(B·real_fraction) real indices and the rest generated, each
from its own stream of per-epoch permutations (:class:`~trustdiff.train.DataStream`), so each
source is visited evenly whatever the other's size. Without generated images every batch is real.
The position of both streams is saved in each checkpoint, so a resumed run draws the same batches.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..train import DataStream

GEN_SEED_OFFSET = 1_000_003     # the generated stream's permutations are independent of the real one's


def real_count(batch_size: int, real_fraction: float) -> int:
    """Real images per batch: round(B·real_fraction), at least 1 and at most B."""
    return min(batch_size, max(1, round(batch_size * real_fraction)))


class MixedStream:
    """``take(B)`` → B indices into [real; generated]: :func:`real_count` real, the rest generated."""

    def __init__(self, n: int, seed: int, *, n_real: int, real_fraction: float, real: dict | None = None,
                 gen: dict | None = None):
        if not 0 < n_real <= n:
            raise InputError(f"mixed data: expected 0 < n_real <= n, got n_real={n_real}, n={n}")
        if not 0 < real_fraction <= 1:
            raise InputError(f"real_fraction: expected in (0, 1], got {real_fraction!r}")
        self.n_real, self.n_gen, self.real_fraction = n_real, n - n_real, real_fraction
        self.real = DataStream(n_real, seed, **(real or {}))
        self.gen = DataStream(self.n_gen, seed + GEN_SEED_OFFSET, **(gen or {})) if self.n_gen else None

    @property
    def position(self) -> dict:
        return {"real": self.real.position, "gen": self.gen.position if self.gen else None}

    def take(self, k: int) -> torch.Tensor:
        r = real_count(k, self.real_fraction) if self.gen else k
        parts = [self.real.take(r)]
        if k - r:
            parts.append(self.gen.take(k - r) + self.n_real)
        return torch.cat(parts)


def mixed_stream(n_real: int, real_fraction: float):
    """The ``stream`` factory for :func:`trustdiff.train.fit`."""
    def make(n: int, seed: int, real=None, gen=None, **_):
        return MixedStream(n, seed, n_real=n_real, real_fraction=real_fraction, real=real, gen=gen)
    return make


def iterations_per_epoch(n_real: int, batch_size: int) -> int:
    """An "epoch": the updates that visit the real set once at full batch size, ⌈n_real / B⌉ —
    fixed whatever the size of the generated set (Gowal et al.'s semi-supervised sampler)."""
    return max(1, math.ceil(n_real / batch_size))
