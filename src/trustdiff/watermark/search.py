"""Detection under a search: the decoder reads each image under a small declared set of inverse
transforms and keeps, per image, the transform whose bits match the key best.

A flip is undone exactly by flipping back and a translation of d pixels (nearly) by one of −d,
so an image an attacker mirrored or moved still gives the owner's bits under one of the
transforms. The price is statistical: the best of K counts is more often high on a clean image
than one count, so the decision uses the union bound (:func:`~trustdiff.watermark.stats.search_threshold`,
threshold at α / K) and the false-positive rate stays at the level claimed, whatever the
dependence between the K reads.

=================  ===========================================================================
none               the image as it is (K = 1: the plain test)
flips              as it is, mirrored left–right, top–bottom, and both (K = 4)
shifts             moved by (dx, dy), each in −1..1 pixels, edge fill (K = 9)
shifts2            moved by (dx, dy), each in −2..2 (K = 25)
flips+shifts       every flip with every 1-pixel move (K = 36)
geometry           as it is or mirrored left–right, each either moved by (dx, dy) in −1..1 or
                   un-cropped from a 0.9 crop with the window centred on a 3×3 grid of offsets
                   (0, ±0.07 of the half-side, ≤ 0.56 px from any offset a 0.9 crop draws at
                   32×32) (K = 2 × (9 + 9) = 36)
=================  ===========================================================================
"""
from __future__ import annotations

import itertools

import torch

from ..errors import InputError
from .distortions import hflip, translate, uncrop, vflip

_FLIPS = {"id": (), "hflip": (hflip,), "vflip": (vflip,), "hvflip": (hflip, vflip)}


def _moves(r: int) -> list[tuple[str, tuple]]:
    out = []
    for dy, dx in itertools.product(range(-r, r + 1), repeat=2):
        label = "id" if (dx, dy) == (0, 0) else f"move({dx},{dy})"
        out.append((label, () if (dx, dy) == (0, 0) else ((lambda x, dx=dx, dy=dy: translate(x, dx, dy)),)))
    out.sort(key=lambda t: t[0] != "id")            # the identity first (ties go to it)
    return out


def _product(a, b):
    out = []
    for (la, fa), (lb, fb) in itertools.product(a, b):
        label = "+".join(v for v in (la, lb) if v != "id") or "id"
        out.append((label, fa + fb))
    return out


def _uncrops(scale: float, offsets) -> list[tuple[str, tuple]]:
    return [(f"uncrop({scale:g},{tx:+g},{ty:+g})", ((lambda x, tx=tx, ty=ty: uncrop(x, scale, tx, ty)),))
            for ty, tx in itertools.product(offsets, repeat=2)]


SEARCHES = {
    "none": [("id", ())],
    "flips": list(_FLIPS.items()),
    "shifts": _moves(1),
    "shifts2": _moves(2),
    "flips+shifts": _product(list(_FLIPS.items()), _moves(1)),
    "geometry": _product([("id", ()), ("hflip", (hflip,))], _moves(1) + _uncrops(0.9, (-0.07, 0.0, 0.07))),
}


def resolve_search(search) -> list[tuple[str, tuple]]:
    """The transforms of a search name (:data:`SEARCHES`): [(label, (fn, …))], identity first."""
    if search is None:
        search = "none"
    if search not in SEARCHES:
        raise InputError(f"search: expected one of {', '.join(SEARCHES)}, got {search!r}")
    return SEARCHES[search]


def undo(x: torch.Tensor, fns: tuple) -> torch.Tensor:
    for f in fns:
        x = f(x)
    return x


def read_all(decode, x: torch.Tensor, search) -> torch.Tensor:
    """The bits of every image under every transform of ``search``: int64 K×N×n on the CPU.
    ``decode(x) -> bits`` decodes a batch."""
    return torch.stack([decode(undo(x, fns)).cpu().to(torch.int64) for _, fns in resolve_search(search)])


def best_of(reads: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From K×N×n reads: per image the best match count with ``key`` ([n] or N×n) and the index
    of the first transform reaching it: (matches [N], index [N])."""
    m = (reads == key.to(torch.int64)).sum(-1)                 # K×N
    best, which = m.max(0)                                     # ties: the first maximal index
    return best, which


def best_bits(decode, x: torch.Tensor, key: torch.Tensor, search) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the decoded bits under the transform of ``search`` that matches ``key`` best
    (the first such transform on a tie) and that transform's index: (bits N×n, index [N]) on the
    CPU. ``decode(x) -> bits`` decodes a batch; ``key`` [n] or N×n."""
    reads = read_all(decode, x, search)
    _, which = best_of(reads, key)
    return reads[which, torch.arange(reads.shape[1])], which
