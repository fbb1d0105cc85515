"""Exact k-nearest neighbours in ℓ2 at scale: batched matmul distances, chunked, bounded memory.

For queries A (N×D) and keys B (M×D) the squared distances of a block are
``‖a‖² + ‖b‖² − 2·a·bᵀ`` — one matmul on the queries' device. Keys are visited in chunks of
``chunk`` rows (moved to the queries' device one chunk at a time, so the key set may stay on the
CPU) and queries in blocks of ``query_chunk`` rows; after each key chunk the block's running
top-k is merged with the chunk's top-k. Besides the N×k results, the memory in use is
O(query_chunk · (chunk + k) + chunk · D) whatever N and M are: at the defaults one 2,048 × 8,192
block of floats (64 MiB) plus the key chunk's temporaries. bench/knn_scale.py measures it: 100k
generations × 60k MNIST training images (784 features, k = 50) add 296 MiB to their inputs'
479, of which 60 MiB are the results; 10k generations add 183 MiB.

The matmul form loses precision for near-identical vectors (the difference of two large
numbers), exactly where extraction looks; so the final candidates (k plus a few spares) have
their distances recomputed directly as ‖a − b‖ and are re-sorted. The distances returned are
those direct ones.
"""
from __future__ import annotations

import torch

from ..errors import InputError

#: spare candidates kept beyond k, re-ranked by their directly computed distances
_SPARE = 8


def _as_rows(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{name}: expected a float tensor N×D (or N×C×H×W), got "
                         f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.ndim < 2:
        raise InputError(f"{name}: expected N×D (or N×C×H×W), got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def knn(queries: torch.Tensor, keys: torch.Tensor, k: int = 1, *, chunk: int = 8192,
        query_chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest keys (ℓ2) of every query.

    Args:
        queries: N×D (or N×C×H×W, flattened), float, on any device: the work runs there.
        keys: M×D with the same D (any device; moved to the queries' device a chunk at a time).
        k: neighbours per query, 1 ≤ k ≤ M.
        chunk: key rows per matmul block (memory: ``query_chunk × chunk`` floats).
        query_chunk: query rows per block.

    Returns:
        (distances N×k, ascending, in the inputs' units (‖a − b‖₂, not squared), indices N×k
        int64 into ``keys``), on the queries' device. Ties are broken by the lower index only
        as far as ``torch.topk`` does; the result does not depend on ``chunk`` except for such ties.
    """
    a = _as_rows(queries, "queries")
    b = _as_rows(keys, "keys")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"knn: queries have {a.shape[1]} features, keys {b.shape[1]}")
    m = b.shape[0]
    if not isinstance(k, int) or not 1 <= k <= m:
        raise InputError(f"knn: expected 1 <= k <= {m} (the number of keys), got {k!r}")
    for name, v in (("chunk", chunk), ("query_chunk", query_chunk)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"knn: expected {name} >= 1, got {v!r}")
    dev, dt = a.device, a.dtype
    kc = min(k + _SPARE, m)                                    # candidates kept per query
    out_d = torch.empty(a.shape[0], k, device=dev, dtype=dt)
    out_i = torch.empty(a.shape[0], k, device=dev, dtype=torch.long)
    with torch.no_grad():
        for q0 in range(0, a.shape[0], query_chunk):
            qa = a[q0: q0 + query_chunk]
            qn = qa.square().sum(1, keepdim=True)             # ‖a‖², [q, 1]
            best_d = torch.full((qa.shape[0], 0), float("inf"), device=dev, dtype=dt)
            best_i = torch.zeros((qa.shape[0], 0), device=dev, dtype=torch.long)
            for k0 in range(0, m, chunk):
                kb = b[k0: k0 + chunk].to(device=dev, dtype=dt)
                d2 = (qa @ kb.T).mul_(-2.0).add_(qn).add_(kb.square().sum(1)[None, :])    # one block in memory
                t = min(kc, kb.shape[0])
                cd, ci = torch.topk(d2, t, dim=1, largest=False)
                cat_d, cat_i = torch.cat([best_d, cd], 1), torch.cat([best_i, ci + k0], 1)
                t = min(kc, cat_d.shape[1])
                sel_d, sel = torch.topk(cat_d, t, dim=1, largest=False)
                best_d, best_i = sel_d, cat_i.gather(1, sel)
            # exact distances of the candidates, one candidate rank at a time (q×D, not q×kc×D, in memory),
            # then the final k by those
            exact = torch.empty(best_i.shape, device=dev, dtype=dt)
            for j in range(best_i.shape[1]):
                cj = b[best_i[:, j].to(b.device)].to(device=dev, dtype=dt)
                exact[:, j] = (cj - qa).square().sum(1).sqrt()
            d_sorted, order = torch.sort(exact, dim=1, stable=True)
            out_d[q0: q0 + qa.shape[0]] = d_sorted[:, :k]
            out_i[q0: q0 + qa.shape[0]] = best_i.gather(1, order)[:, :k]
    return out_d, out_i


def brute_force_knn(queries: torch.Tensor, keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: every distance directly (``torch.cdist``), then ``topk``. For tests and
    small sets only (memory N×M)."""
    a, b = _as_rows(queries, "queries"), _as_rows(keys, "keys").to(queries.device)
    d = torch.cdist(a.double(), b.double())
    v, i = torch.topk(d, k, dim=1, largest=False)
    return v.to(a.dtype), i


__all__ = ["knn", "brute_force_knn"]
