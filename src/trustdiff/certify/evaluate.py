"""CERTIFY over a test set, one row per image, as Cohen et al.'s ``certify.py`` does.

Image ``idx`` draws its noise from ``torch.Generator(device).manual_seed(seed + idx)``, so a row
depends only on (model, image, seed) on one kind of device: shards of a test set give the same
rows as one run, and the configurations of a comparison see the same noise (common random
numbers). The generator lives on the device because the n noise draws per image are the bulk of
the work; a CPU and a CUDA generator give different (equally valid) noise for one seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..errors import InputError
from .smooth import Smooth, check_certify_arguments


@dataclass(frozen=True)
class Row:
    """One line of Cohen's TSV: dataset index, true label, certified class (−1: abstain),
    radius (pixel units), 1 if predict == label, and the seconds CERTIFY took."""
    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float


def select_indices(num: int, *, skip: int = 1, max_index: int | None = None, shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Cohen et al.'s selection: every ``skip``-th index of 0..num−1, stopping before
    ``max_index`` (their ``--max`` is an index bound); then shard i of k takes every k-th of
    those, starting at the i-th."""
    i, k = shard
    if skip < 1:
        raise InputError(f"skip: expected an integer >= 1, got {skip!r}")
    if not (k >= 1 and 0 <= i < k):
        raise InputError(f"shard: expected i/k with 0 <= i < k, got {i}/{k}")
    stop = num if max_index is None or max_index < 0 else min(num, max_index)
    return list(range(0, stop, skip))[i::k]


def certify_set(smoothed: Smooth, x: torch.Tensor, y: torch.Tensor, indices, *, n0: int, n: int, alpha: float,
                batch_size: int, seed: int = 0, device=None, on_row=None, progress: bool = False) -> list[Row]:
    """CERTIFY each image ``x[idx]`` (C×H×W in [0, 1]) for idx in ``indices``.

    Args:
        x: N×C×H×W in [0, 1]; y: labels [N].
        device: where the images and their noise go (default: x's device).
        on_row: called with each :class:`Row` as it is done (e.g. to append it to a file).
    """
    from tqdm.auto import tqdm

    check_certify_arguments(n0, n, alpha, batch_size)
    device = torch.device(device) if device is not None else x.device
    rows = []
    for idx in tqdm(list(indices), desc="certify", unit="img", disable=not progress, dynamic_ncols=True):
        idx = int(idx)
        label = int(y[idx])
        g = torch.Generator(device=device).manual_seed(int(seed) + idx)
        t0 = time.perf_counter()
        predict, radius = smoothed.certify(x[idx].to(device), n0, n, alpha, batch_size, generator=g)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row = Row(idx, label, int(predict), float(radius), int(predict == label), time.perf_counter() - t0)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
