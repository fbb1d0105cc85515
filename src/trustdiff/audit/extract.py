"""Training-data extraction by generate-and-filter (Carlini et al. 2023, *Extracting Training Data
from Diffusion Models*, §5: the criterion for small images such as CIFAR-10).

The criterion implemented (the paper's, as we read it; its constants are arguments):

    ℓ(x̂, x; S_x̂) = ‖x̂ − x‖₂ / (α · E_{y ∈ S_x̂} ‖x̂ − y‖₂)

where x is the training image nearest to the generation x̂ (ℓ2 over pixels), S_x̂ the set of the
n training images nearest to x̂ (x itself included, as the nearest), α = 0.5 and n = 50; x̂ is
*extracted* (a copy of x) when ℓ < δ = 1/3. Dividing by the mean distance to the n nearest
neighbours makes the test relative to how crowded that part of image space is: a generation is
flagged only if it is much closer to one training image than to its other near neighbours, and ℓ
does not change when every image is scaled by the same factor (it is *scale-invariant*, so pixel
units do not matter). Beside it, the plain ℓ2 test: the root-mean-square pixel distance
‖x̂ − x‖₂/√d (pixels in [0, 1]) below a threshold.

Exact duplicates in the training set are collapsed before the search (a duplicated image would
otherwise fill S_x̂ with copies of itself and hide its own extraction), so S_x̂ holds n *distinct*
training images and "distinct training images extracted" counts each image once however often it
repeats. The baseline a novel sample should look like is the held-out real images (same
distribution, never trained on) put through the same criterion: their ℓ and RMS distances are the
distribution a non-memorising model's samples should follow, and the count they flag is the
criterion's false-positive floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..images import check_images
from .neighbours import knn


def _proportion(k: int, n: int, level: float = 0.95) -> dict:
    """:func:`trustdiff.metrics.intervals.proportion`, imported when first needed (the metrics
    package pulls in the network libraries, which ``audit subset`` does not need)."""
    from ..metrics.intervals import proportion as p

    return p(k, n, level)

#: the paper's constants for small images (CIFAR-10)
ALPHA = 0.5
N_NEIGHBOURS = 50
DELTA = 1.0 / 3.0
#: the plain test: RMS pixel distance ([0, 1] pixels) below this is a copy. Held-out digits are never
#: that close to a training digit (their least RMS distance is 0.042 at 16×16, 0.059 at 8×8)
RMS_THRESHOLD = 0.03


@dataclass
class TrainingSet:
    """A training set prepared for the search: its distinct images (exact duplicates collapsed)."""
    keys: torch.Tensor            # M×D distinct images, flattened, pixels in [0, 1]
    first: torch.Tensor           # [M] index of each distinct image's first copy in the original set
    copies: torch.Tensor          # [M] how many times each distinct image occurs
    labels: torch.Tensor | None   # [M] label of each distinct image (of its first copy), or None
    size: int                     # images in the original set (with duplicates)


def prepare_training_set(train: torch.Tensor, labels=None) -> TrainingSet:
    """Collapse exact duplicates of ``train`` (N×C×H×W in [0, 1]); ``labels`` int64 [N] optional."""
    check_images(train, name="training images")
    flat = train.reshape(train.shape[0], -1)
    uniq, inverse, counts = torch.unique(flat, dim=0, return_inverse=True, return_counts=True)
    first = torch.full((uniq.shape[0],), flat.shape[0], dtype=torch.long, device=flat.device)
    first = first.scatter_reduce(0, inverse, torch.arange(flat.shape[0], device=flat.device), reduce="amin")
    order = torch.argsort(first)                     # keep the original order of first appearance
    first, counts = first[order], counts[order]
    lab = None
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (train.shape[0],):
            raise InputError(f"training labels: expected [{train.shape[0]}], got {tuple(labels.shape)}")
        lab = labels.to(first.device)[first].cpu()
    return TrainingSet(flat[first], first.cpu(), counts.cpu(), lab, int(train.shape[0]))


@dataclass
class NeighbourScores:
    """Per-image outcome of the search, all [N] on the CPU."""
    index: torch.Tensor     # the nearest distinct training image (into TrainingSet.keys)
    l2: torch.Tensor        # ‖x̂ − x‖₂ to it, pixels in [0, 1]
    rms: torch.Tensor       # l2 / √d
    ratio: torch.Tensor     # Carlini et al.'s ℓ(x̂, x; S_x̂)
    n_neighbours: int       # |S_x̂| used (min(n, M))
    alpha: float


def normalized_distance(dist: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """ℓ from the sorted distances N×n to the n nearest training images (column 0 the nearest):
    d₀ / (α · mean_j d_j). Scale-invariant: ℓ(c·d) = ℓ(d) for c > 0. A generation whose n
    neighbours are all at distance 0 (n copies) gets 0."""
    if not alpha > 0:
        raise InputError(f"alpha: expected > 0, got {alpha!r}")
    mean = dist.mean(1)
    return torch.where(mean > 0, dist[:, 0] / (alpha * mean.clamp_min(torch.finfo(dist.dtype).tiny)),
                       torch.zeros_like(mean))


def score_images(x: torch.Tensor, train: TrainingSet, *, n_neighbours: int = N_NEIGHBOURS, alpha: float = ALPHA,
                 chunk: int = 8192, query_chunk: int = 2048) -> NeighbourScores:
    """Nearest distinct training images of each image of ``x`` (N×C×H×W in [0, 1]; the search
    runs on x's device, the training keys are moved there a chunk at a time) and its ℓ."""
    check_images(x, name="images")
    if x.shape[1:].numel() != train.keys.shape[1]:
        raise InputError(f"images: {tuple(x.shape[1:])} per image, but the training images have "
                         f"{train.keys.shape[1]} values each")
    if not isinstance(n_neighbours, int) or n_neighbours < 1:
        raise InputError(f"n_neighbours: expected an integer >= 1, got {n_neighbours!r}")
    n = min(n_neighbours, train.keys.shape[0])
    d, i = knn(x.reshape(x.shape[0], -1), train.keys, n, chunk=chunk, query_chunk=query_chunk)
    d = d.double()
    dim = train.keys.shape[1]
    return NeighbourScores(i[:, 0].cpu(), d[:, 0].cpu(), (d[:, 0] / math.sqrt(dim)).cpu(),
                           normalized_distance(d, alpha).cpu(), n, alpha)


def flagged(s: NeighbourScores, *, delta: float = DELTA, rms_threshold: float | None = RMS_THRESHOLD) -> dict:
    """Boolean masks [N]: ``"normalized"`` (ℓ < δ), ``"l2"`` (RMS < threshold; all False when
    None) and ``"either"``."""
    norm = s.ratio < delta
    l2 = s.rms < rms_threshold if rms_threshold is not None else torch.zeros_like(norm)
    return {"normalized": norm, "l2": l2, "either": norm | l2}


def _quantiles(v: torch.Tensor) -> dict:
    if not v.numel():
        return {}
    qs = torch.quantile(v.double(), torch.tensor([0.0, 0.01, 0.1, 0.5, 0.9], dtype=torch.float64))
    return {"min": float(qs[0]), "q01": float(qs[1]), "q10": float(qs[2]), "median": float(qs[3]),
            "q90": float(qs[4]), "mean": float(v.double().mean())}


def count_extracted(s: NeighbourScores, mask: torch.Tensor, train: TrainingSet, num_classes: int = 0) -> dict:
    """How many images ``mask`` flags (with its exact interval over the images scored), how many
    distinct training images they copy, and those per class (by the training image's label)."""
    n = int(s.index.numel())
    ids = torch.unique(s.index[mask])
    out = {"flagged": _proportion(int(mask.sum()), n) if n else None, "distinct_training_images": int(ids.numel()),
           "distinct_fraction_of_training_set": int(ids.numel()) / max(int(train.keys.shape[0]), 1),
           "training_indices": train.first[ids].tolist()[:1000]}
    if train.labels is not None and num_classes > 0:
        lab = train.labels[ids]
        out["per_class"] = {str(c): int((lab == c).sum()) for c in range(num_classes)}
    if train.copies.max() > 1:
        dup = train.copies[ids]
        out["by_copies"] = {str(int(c)): {"extracted": int((dup == c).sum()), "of": int((train.copies == c).sum())}
                            for c in torch.unique(train.copies)}
    return out


def extraction_report(generated: torch.Tensor, train: TrainingSet, heldout: torch.Tensor | None = None, *,
                      n_neighbours: int = N_NEIGHBOURS, alpha: float = ALPHA, delta: float = DELTA,
                      rms_threshold: float | None = RMS_THRESHOLD, num_classes: int = 0, chunk: int = 8192,
                      query_chunk: int = 2048) -> tuple[dict, NeighbourScores, NeighbourScores | None]:
    """The whole audit: generations and (if given) held-out real images through the same
    criterion. Returns (report dict for metrics.json, generated scores, held-out scores)."""
    if not 0 < delta:
        raise InputError(f"delta: expected > 0, got {delta!r}")
    if rms_threshold is not None and not rms_threshold >= 0:
        raise InputError(f"rms_threshold: expected >= 0 or None, got {rms_threshold!r}")
    kw = dict(n_neighbours=n_neighbours, alpha=alpha, chunk=chunk, query_chunk=query_chunk)
    g = score_images(generated, train, **kw)
    h = score_images(heldout.to(generated.device), train, **kw) if heldout is not None and len(heldout) else None
    rep = {"criterion": {"definition": "l(x̂, x; S) = ||x̂ − x||_2 / (alpha · mean_{y in S} ||x̂ − y||_2) < delta, "
                                        "x the nearest distinct training image, S the n nearest (x included)",
                         "alpha": alpha, "n_neighbours": n_neighbours, "n_neighbours_used": g.n_neighbours,
                         "delta": delta, "rms_threshold": rms_threshold,
                         "reference": "Carlini et al. 2023, Extracting Training Data from Diffusion Models, §5"},
           "training_images": train.size, "distinct_training_images": int(train.keys.shape[0]),
           "generated_images": int(generated.shape[0])}
    for name, s in (("generated", g), ("heldout", h)):
        if s is None:
            continue
        masks = flagged(s, delta=delta, rms_threshold=rms_threshold)
        rep[name] = {"n": int(s.index.numel()),
                     "normalized": count_extracted(s, masks["normalized"], train, num_classes),
                     "l2": count_extracted(s, masks["l2"], train, num_classes) if rms_threshold is not None else None,
                     "ratio": _quantiles(s.ratio), "rms": _quantiles(s.rms)}
    if h is not None:
        rep["heldout"]["exact_copies_in_training_set"] = int((h.l2 == 0).sum())
        gq, hq = rep["generated"]["rms"], rep["heldout"]["rms"]
        rep["median_rms_generated_over_heldout"] = gq["median"] / hq["median"] if hq.get("median") else None
    return rep, g, h


# ---- figures ------------------------------------------------------------------------------------

def pair_grid(generated: torch.Tensor, train: TrainingSet, s: NeighbourScores, mask: torch.Tensor | None = None, *,
              max_pairs: int = 32, per_row: int = 8) -> np.ndarray:
    """(training image, generation) pairs side by side, most extracted first (lowest ℓ; only the
    flagged ones if ``mask`` flags any, else the closest): uint8 H'×W'×C, each row ``per_row``
    pairs with the training image on the left of its generation."""
    from ..images import make_grid

    order = torch.argsort(s.ratio)
    if mask is not None and bool(mask.any()):
        order = order[mask[order]]
    seen, pick = set(), []
    for j in order.tolist():                         # one pair per distinct training image
        if int(s.index[j]) not in seen:
            seen.add(int(s.index[j]))
            pick.append(j)
        if len(pick) == max_pairs:
            break
    shape = generated.shape[1:]
    scale = max(1, 32 // max(int(shape[-1]), 1))          # small images are enlarged (nearest) to ≥ 32 px
    strips = []
    for j in pick:
        pair = torch.stack([train.keys[int(s.index[j])].reshape(shape).cpu(), generated[j].cpu()]).clamp(0, 1)
        strips.append(make_grid(pair, nrow=2, pad=0).repeat(scale, 0).repeat(scale, 1))
    if not strips:
        return make_grid(torch.zeros(1, *shape), nrow=1)
    h, w, c = strips[0].shape
    gap, rows = 4, (len(strips) + per_row - 1) // per_row
    cols = min(per_row, len(strips))
    grid = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, c), 255, np.uint8)
    for k, st in enumerate(strips):
        r, q = divmod(k, per_row)
        grid[gap + r * (h + gap): gap + r * (h + gap) + h, gap + q * (w + gap): gap + q * (w + gap) + w] = st
    return grid


def plot_distances(path, gen: NeighbourScores, heldout: NeighbourScores | None, *, delta: float = DELTA,
                   rms_threshold: float | None = RMS_THRESHOLD) -> None:
    """Histograms of ℓ and of the RMS nearest-neighbour distance, generations beside held-out real
    images (the baseline), with the thresholds; a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..persist import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, attr, thr, label in ((axes[0], "ratio", delta, "ℓ (Carlini et al.), nearest / (α·mean of n nearest)"),
                                 (axes[1], "rms", rms_threshold, "RMS distance to the nearest training image")):
        vals = [getattr(gen, attr).numpy()] + ([getattr(heldout, attr).numpy()] if heldout is not None else [])
        hi = max(float(v.max()) for v in vals if v.size) if any(v.size for v in vals) else 1.0
        bins = np.linspace(0, max(hi, (thr or 0) * 1.2, 1e-6), 40)
        ax.hist(vals[0], bins=bins, alpha=0.6, density=True, label=f"generated (n={vals[0].size})")
        if heldout is not None:
            ax.hist(vals[1], bins=bins, alpha=0.6, density=True, label=f"held-out real (n={vals[1].size})")
        if thr is not None:
            ax.axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:.3g}")
        ax.set_xlabel(label, fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["ALPHA", "N_NEIGHBOURS", "DELTA", "RMS_THRESHOLD", "TrainingSet", "prepare_training_set", "NeighbourScores",
           "normalized_distance", "score_images", "flagged", "count_extracted", "extraction_report", "pair_grid",
           "plot_distances"]
