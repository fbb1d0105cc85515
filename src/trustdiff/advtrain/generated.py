"""A labelled data set sampled from a class-conditional diffusion model, in resumable shards.

    generate_set(model_dir, out, n)     → out/images-XXXXX.npz (the shards of
                                          :func:`trustdiff.diffusion.model.write_shards`: Heun with
                                          20 steps by default, as Wang et al. 2023)
    filter_top_k(...)                   → keep, per class, the k images a pseudo-labelling classifier
                                          is most confident are of their class (Wang et al.'s filter)
    write_pseudo_labelled(out, clf, …)  → an unconditional model's shards labelled by a classifier
                                          (Wang et al. label unconditional samples so), the images
                                          below ``min_confidence`` dropped: out/labelled.npz, and
                                          out/labelled.json naming the classifier and the filter
    load_generated(out, n)              → (x, y) of the first n generated images
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import load_npz
from ..errors import InputError
from ..images import to_uint8

FILTERED = "filtered.npz"
LABELLED = "labelled.npz"


def generate_set(model_dir, out, n: int, *, shard_size: int = 10_000, seed: int = 0, sampler: str = "heun",
                 steps: int = 20, batch: int = 256, rank: int = 0, world: int = 1, device=None,
                 progress: bool = False, allow_pickle: bool = False, precision: str = "fp32",
                 adm_config=None) -> list[Path]:
    """Sample n images into shards on ``device`` (default: the CPU) at ``precision``: labelled
    (classes cycling 0…K−1) from a class-conditional model, unlabelled (−1; label them with
    :func:`write_pseudo_labelled`) from an unconditional one. Existing shards are kept (resume),
    process ``rank`` of ``world`` writes its share. A seed's noise is the same on every device
    (:func:`trustdiff.diffusion.model.sample`)."""
    from ..diffusion.model import load_model, write_shards

    den, spec = load_model(model_dir, allow_pickle=allow_pickle, adm_config=adm_config)
    den = den.to(device if device is not None else "cpu")
    return write_shards(den, spec, out, n, shard_size=shard_size, seed=seed, sampler=sampler, steps=steps,
                        batch=batch, rank=rank, world=world, progress=progress, precision=precision)


def shard_paths(folder) -> list[Path]:
    folder = Path(folder)
    paths = sorted(folder.glob("images-*.npz"))
    if not paths:
        raise InputError(f"{folder}: expected generated shards (images-*.npz), found none")
    return paths


@torch.no_grad()
def confidence(classifier, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """p(y | x) under ``classifier`` for each image (its own label): float [N] on the CPU; the
    batches are classified on the classifier's device."""
    from ..runtime import module_device

    out, device = [], module_device(classifier)
    for i in range(0, len(x), batch):
        p = torch.softmax(classifier(x[i:i + batch].to(device)).float(), 1)
        out.append(p.gather(1, y[i:i + batch, None].to(device))[:, 0].cpu())
    return torch.cat(out) if out else torch.zeros(0)


def filter_top_k(x: torch.Tensor, y: torch.Tensor, classifier, k_per_class: int) -> torch.Tensor:
    """Indices (sorted) of the ``k_per_class`` images of each class with the highest p(y | x)."""
    if k_per_class < 1:
        raise InputError(f"k_per_class: expected >= 1, got {k_per_class}")
    conf = confidence(classifier, x, y)
    keep = []
    for c in torch.unique(y):
        idx = (y == c).nonzero()[:, 0]
        keep.append(idx[conf[idx].argsort(descending=True)[:k_per_class]])
    return torch.cat(keep).sort().values


def write_filtered(folder, classifier, k_per_class: int) -> Path:
    """Filter all shards in ``folder`` (its pseudo-labelled set when there is one) into
    ``folder/filtered.npz`` (images, labels, seeds, confidence)."""
    from ..persist import atomic_write_bytes
    import io

    labelled = Path(folder) / LABELLED
    x, y, seeds = _read([labelled] if labelled.is_file() else shard_paths(folder))
    keep = filter_top_k(x, y, classifier, k_per_class)
    conf = confidence(classifier, x[keep], y[keep])
    buf = io.BytesIO()
    np.savez(buf, images=to_uint8(x[keep]), labels=y[keep].numpy(), seeds=seeds[keep.numpy()], confidence=conf.numpy())
    path = Path(folder) / FILTERED
    atomic_write_bytes(path, buf.getvalue())
    return path


@torch.no_grad()
def pseudo_labels(classifier, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax label, its probability) under ``classifier`` for each image: int64 [N], float [N]."""
    from ..runtime import module_device

    labels, conf, device = [], [], module_device(classifier)
    for i in range(0, len(x), batch):
        p = torch.softmax(classifier(x[i:i + batch].to(device)).float(), 1).cpu()
        c, y = p.max(1)
        labels.append(y)
        conf.append(c)
    return (torch.cat(labels), torch.cat(conf)) if labels else (torch.zeros(0, dtype=torch.long), torch.zeros(0))


def write_pseudo_labelled(folder, classifier, *, min_confidence: float = 0.0, classifier_name: str = "") -> Path:
    """Label every image of ``folder``'s shards with ``classifier``'s prediction, keep those whose
    probability is at least ``min_confidence``, and write ``folder/labelled.npz`` (images, labels,
    seeds, confidence) and ``folder/labelled.json``: the classifier, the filter and what it kept."""
    from ..persist import atomic_write_bytes, atomic_write_json
    import io

    if not 0 <= min_confidence < 1:
        raise InputError(f"min_confidence: expected in [0, 1), got {min_confidence!r}")
    x, _, seeds = _read(shard_paths(folder))
    y, conf = pseudo_labels(classifier, x)
    keep = (conf >= min_confidence).nonzero()[:, 0]
    buf = io.BytesIO()
    np.savez(buf, images=to_uint8(x[keep]), labels=y[keep].numpy(), seeds=seeds[keep.numpy()],
             confidence=conf[keep].numpy())
    path = Path(folder) / LABELLED
    atomic_write_bytes(path, buf.getvalue())
    counts = torch.bincount(y[keep], minlength=int(y.max()) + 1 if len(y) else 0).tolist()
    atomic_write_json(Path(folder) / "labelled.json", {
        "labeller": classifier_name, "labeller_config": getattr(classifier, "config", None),
        "min_confidence": min_confidence, "generated": len(x), "kept": len(keep), "per_class": counts,
        "mean_confidence_kept": float(conf[keep].mean()) if len(keep) else None})
    return path


def _read(paths) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    xs, ys, seeds = [], [], []
    for p in paths:
        s = load_npz(p)
        x, y = s.tensors()
        xs.append(x)
        ys.append(y)
        with np.load(p, allow_pickle=False) as d:
            seeds.append(d["seeds"] if "seeds" in d.files else np.full(len(y), -1, np.int64))
    return torch.cat(xs), torch.cat(ys), np.concatenate(seeds)


def load_generated(path, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (all: None) images of a generated set: a shard folder (its
    ``filtered.npz`` when present, else its ``labelled.npz``, else its shards in order) or one .npz.
    (x float N×C×H×W, y int64)."""
    path = Path(path)
    if path.is_dir():
        paths = next(([path / f] for f in (FILTERED, LABELLED) if (path / f).is_file()), None) or shard_paths(path)
    else:
        paths = [path]
    x, y, _ = _read(paths)
    if (y < 0).any():
        raise InputError(f"{path}: expected labelled images (a class-conditional model's, or pseudo-labelled: "
                         "advtrain generate --label-classifier), got unlabelled ones")
    if n is not None:
        if n > len(x):
            raise InputError(f"{path}: asked for {n} generated images, the set holds {len(x)}")
        x, y = x[:n], y[:n]
    return x, y
