"""The feature network of FD-<dataset>: trained with the training loop, cached, and used in
:func:`fd_report`. The metric itself (:mod:`trustdiff.metrics.fid`) takes any feature net and
imports nothing from here.

A cache entry ``cache_dir/<key>/`` is a weights folder (``model.safetensors``, ``config.json``,
manifest), published atomically when training ends; the training run that makes it lives in
``cache_dir/train-<key>/`` until then, so an interrupted one resumes. An entry whose files do not
match its manifest is reported (one CheckpointError line), not silently retrained.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from ..images import check_images
from ..metrics.fid import FeatureNet, fd, fd_floor, fd_name
from ..nets.classifier import SmallCNN
from ..persist import MANIFEST, load_strict, open_weights_folder, remove_folder, save_weights_folder
from .classifier import classifier_loss_fn
from .config import TrainConfig
from .loop import fit

#: the format of a cache entry's config.json
FORMAT = "trustdiff.feature-net/1"
#: bump when the feature-net architecture or its training recipe changes (invalidates caches)
FEATURE_NET_VERSION = 2


def train_feature_net(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    run_dir,
    steps: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    width: int = 32,
    num_classes: int | None = None,
    resume: bool = False,
    device=None,
    precision: str = "fp32",
) -> FeatureNet:
    """Train a :class:`SmallCNN` classifier on (x, y) with :func:`trustdiff.train.fit` and wrap it.

    Args:
        x: training images N×C×H×W in [0, 1], square, H divisible by 4.
        y: labels, integer tensor [N] in [0, K).
        run_dir: the training run folder (checkpoints, log).
        num_classes: K; default ``y.max() + 1``.
        resume: continue a run that ``run_dir`` already holds (``fit`` refuses one otherwise).
        device, precision: where and how it trains (:func:`~trustdiff.train.fit`); default x's device.

    Returns:
        A :class:`FeatureNet` (eval mode) on the training device.
    """
    x = check_images(x, name="x_train")
    _check_labels(x, y)
    with torch.random.fork_rng(devices=[]):   # the initial weights follow the seed, not the caller's RNG state
        torch.manual_seed(seed)
        net = SmallCNN(**_net_config(x, y, width, num_classes))
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False,
                      warmup_steps=min(100, steps // 10))
    result = fit(net, classifier_loss_fn(), (x, y.long()), cfg, run_dir, resume=resume,
                 device=device if device is not None else x.device, precision=precision)
    return FeatureNet(result.model)  # the raw weights: a classifier needs no EMA to give features


def _check_labels(x: torch.Tensor, y) -> None:
    """Labels must be an integer tensor [N], one per image."""
    ok = isinstance(y, torch.Tensor) and y.ndim == 1 and len(y) == len(x) >= 2 and not y.is_floating_point()
    if not ok or y.min() < 0:
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"y_train: expected non-negative integer labels [N={len(x)}], N >= 2, got {got}")


def _net_config(x, y, width, num_classes) -> dict:
    k = int(y.max()) + 1 if num_classes is None else num_classes
    return dict(in_channels=int(x.shape[1]), num_classes=k, width=width, resolution=int(x.shape[-1]))


def cached_feature_net(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    content_hash: str,
    cache_dir,
    *,
    steps: int = 1000,  # 16×16 digits: ~75 s on 2 shared CPU cores; 300 steps gave 99% test accuracy
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    width: int = 32,
    device=None,
    precision: str = "fp32",
) -> FeatureNet:
    """:func:`train_feature_net`, cached in ``cache_dir/<key>/`` (see the module docstring), where
    key hashes (``content_hash`` of the data, net config, train config). An entry with a manifest
    is checked against it and reused without training; a folder without one (interrupted, or
    written by an older trustdiff) is recomputed.

    Args:
        x_train: images N×C×H×W in [0, 1]; y_train: integer labels [N].
        content_hash: a hash of the data's content (the caller's; it is trusted, not recomputed).
        device, precision: where and how a missing entry is trained (default x_train's device);
            the cache key holds neither (an entry trained on a GPU serves the CPU too).

    Returns:
        A :class:`FeatureNet` (eval mode) on ``device`` (default x_train's).
    """
    device = torch.device(device) if device is not None else x_train.device
    x_train = check_images(x_train, name="x_train")
    if not isinstance(content_hash, str) or not content_hash:
        raise InputError(f"content_hash: expected a non-empty string, got {content_hash!r}")
    _check_labels(x_train, y_train)
    net_cfg = _net_config(x_train, y_train, width, None)
    train_cfg = dict(steps=steps, seed=seed, batch_size=batch_size, lr=lr)
    spec = dict(arch=SmallCNN.arch, data=content_hash, net=net_cfg, train=train_cfg, version=FEATURE_NET_VERSION)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / key
    if (folder / MANIFEST).is_file():
        return _load_feature_net(folder, spec).to(device)

    run_dir = Path(cache_dir) / f"train-{key}"
    net = train_feature_net(x_train, y_train, run_dir=run_dir, num_classes=net_cfg["num_classes"],
                            width=width, resume=True, device=device, precision=precision,
                            **train_cfg)  # resume: an interrupted run goes on
    with torch.no_grad():  # a sanity figure for the report: does the feature net classify?
        acc = float((net.classifier(x_train[:2048].to(device)).argmax(1) == y_train[:2048].to(device)).float().mean())
    save_weights_folder(folder, net.classifier, {"format": FORMAT, **spec, "train_accuracy": acc})
    if run_dir.is_dir():
        remove_folder(run_dir)  # only needed to resume an interrupted training
    return net


def _load_feature_net(folder: Path, spec: dict) -> FeatureNet:
    """Rebuild a cached :class:`FeatureNet` from ``folder``; CheckpointError if it doesn't fit."""
    try:
        cfg, state = open_weights_folder(folder, FORMAT, "a feature net cache entry")
    except CheckpointError as e:
        raise CheckpointError(f"feature net cache: {e}; delete {folder} to recompute it") from None
    if any(cfg.get(k) != v for k, v in spec.items()):
        raise CheckpointError(f"feature net cache {folder}: config.json does not match the requested net")
    net = SmallCNN(**cfg["net"])
    load_strict(net, state, where=folder, name="feature net")
    return FeatureNet(net)


def fd_report(train, test, fake_x: torch.Tensor, *, cache_dir, feature_steps: int = 1000, seed: int = 0,
              device=None, precision: str = "fp32") -> dict:
    """The generator's FD against the real test set, beside the real-data floor FD(train, test).

    Args:
        train, test: :class:`trustdiff.data.ImageSet` (the feature net is trained on ``train``).
        fake_x: generated images N×C×H×W in [0, 1].
        device: where the feature net trains and the features are computed (default fake_x's);
            every image set is moved there. ``precision``: the feature net's training precision.

    Returns:
        ``{"fd_name", "fd", "fd_floor", "fd_ratio", "n_fake", "n_test", "n_train"}``, named plainly
        (e.g. "FD-digits": not Inception FID, not comparable with published FIDs).
    """
    device = torch.device(device) if device is not None else fake_x.device
    x_tr, y_tr = train.tensors()
    x_te, _ = test.tensors()
    x_tr, x_te, fake_x = x_tr.to(device), x_te.to(device), fake_x.to(device)
    net = cached_feature_net(x_tr, y_tr, train.content_hash(), cache_dir, steps=feature_steps, seed=seed,
                             precision=precision)
    value = fd(x_te, fake_x, net)
    floor = fd_floor(x_tr, x_te, net)
    return {"fd_name": fd_name(train.name), "fd": value, "fd_floor": floor, "fd_ratio": value / floor,
            "n_fake": len(fake_x), "n_test": len(x_te), "n_train": len(x_tr)}
