"""The base classifiers of the comparison: a standard classifier (clean images) and Cohen et al.'s
noise-trained one (Gaussian augmentation at the σ that will be certified, their Section 5), both
:class:`~trustdiff.nets.SmallCNN` taking pixel-space images.

A classifier is saved as a folder: ``model.safetensors`` + ``config.json`` (``{"arch": ...,
**net.config, "noise_sigma": ..., ...}``) + the manifest, published atomically and checked
against the manifest on load (:func:`trustdiff.persist.save_weights_folder`).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InputError
from ..nets import CLASSIFIERS, SmallCNN
from ..persist import (FOLDER_CONFIG as CONFIG, load_strict, open_weights_folder, read_folder_config,
                       resolve_weights_folder, save_weights_folder)
from ..runtime import module_device
from .config import TrainConfig
from .loop import fit

FORMAT = "trustdiff.classifier/1"
CLASSIFIER_DIR = "classifier"     # the folder train_classifier writes inside its run folder


def classifier_loss_fn(noise_sigma: float = 0.0):
    """``loss_fn(net, x, y, generator) -> [B]`` cross-entropy for :func:`trustdiff.train.fit`.
    With ``noise_sigma > 0`` the network sees x + δ, δ ~ N(0, noise_sigma²I) in pixel units,
    unclamped, drawn from the loop's generator (Cohen et al.'s Gaussian data augmentation)."""
    if not noise_sigma >= 0:
        raise InputError(f"noise_sigma: expected >= 0, got {noise_sigma!r}")

    def loss_fn(net, x, y, generator):
        if noise_sigma > 0:
            x = x + noise_sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return F.cross_entropy(net(x), y, reduction="none")

    return loss_fn


def train_classifier(x: torch.Tensor, y: torch.Tensor, *, run_dir, noise_sigma: float = 0.0, steps: int = 2000,
                     batch_size: int = 128, lr: float = 1e-3, seed: int = 0, width: int = 32,
                     resume: bool = False, progress: bool = True, device=None, precision: str = "fp32",
                     **meta) -> SmallCNN:
    """Train a SmallCNN on (x, y) with :func:`trustdiff.train.fit` on ``device`` at ``precision``
    and save its EMA weights to ``run_dir/classifier``; returns that network (eval mode, on the
    training device).

    Args:
        x: float N×C×H×W in [0, 1] (H = W); y: int64 labels [N] in 0..K−1.
        noise_sigma: 0 for a standard classifier; σ > 0 for Cohen et al.'s noise-trained one.
        run_dir: the training run folder (config, metrics.jsonl, checkpoints, classifier/).
        meta: extra JSON-able keys for the classifier's config.json (e.g. ``data="digits"``).
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise InputError(f"x: expected square images N×C×H×W, got shape {tuple(x.shape)}")
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, warmup_steps=min(200, steps // 10),
                      checkpoint_every=max(1, min(500, steps)), progress=progress)
    num_classes = int(y.max()) + 1 if y.numel() else 0
    with torch.random.fork_rng(devices=[]):   # the initial weights follow the seed; the caller's RNG is left alone
        torch.manual_seed(seed)
        net = SmallCNN(in_channels=x.shape[1], num_classes=num_classes, width=width, resolution=x.shape[-1])
    result = fit(net, classifier_loss_fn(noise_sigma), (x, y), cfg, run_dir, resume=resume, device=device,
                 precision=precision)
    ema = result.ema.eval()
    if int(os.environ.get("RANK", "0")) == 0:          # under Accelerate only rank 0 writes
        save_classifier(Path(run_dir) / CLASSIFIER_DIR, ema, noise_sigma=noise_sigma, steps=result.step, seed=seed, **meta)
    return ema


def save_classifier(folder, net: nn.Module, *, noise_sigma: float = 0.0, **meta) -> Path:
    """Write the folder ``folder`` (``model.safetensors``, ``config.json``, manifest) atomically."""
    arch = getattr(net, "arch", None)
    if arch not in CLASSIFIERS or not isinstance(getattr(net, "config", None), dict):
        raise InputError(f"classifier: expected a network from trustdiff.nets.CLASSIFIERS with a .config, got {type(net).__name__}")
    return save_weights_folder(folder, net, {"format": FORMAT, "arch": arch, **net.config,
                                             "noise_sigma": float(noise_sigma), **meta})


def _resolve(folder) -> Path:
    return resolve_weights_folder(folder, CLASSIFIER_DIR)       # or a train-classifier run folder


def classifier_config(folder) -> dict:
    """The config.json of a classifier folder (or of the ``classifier/`` inside a run folder),
    after the folder is checked against its manifest."""
    return read_folder_config(_resolve(folder), FORMAT, "a classifier folder or a train-classifier run folder")


def load_classifier(folder, *, allow_pickle: bool = False) -> nn.Module:
    """Rebuild a saved classifier (eval mode, parameters frozen; input gradients still flow).
    Every file is checked against the manifest first; pickled weights are refused unless
    ``allow_pickle``. Any mismatch is one CheckpointError line."""
    folder = _resolve(folder)
    cfg, state = open_weights_folder(folder, FORMAT, "a classifier folder or a train-classifier run folder",
                                     allow_pickle=allow_pickle)
    arch = cfg.get("arch")
    if arch not in CLASSIFIERS:
        raise CheckpointError(f"{folder / CONFIG}: unknown arch {arch!r}; known: {', '.join(CLASSIFIERS)}")
    params = inspect.signature(CLASSIFIERS[arch]).parameters
    try:
        net = CLASSIFIERS[arch](**{k: v for k, v in cfg.items() if k in params})
    except (InputError, TypeError) as e:
        raise CheckpointError(f"{folder / CONFIG}: cannot build {arch!r} ({e})") from None
    load_strict(net, state, where=folder, name="classifier")
    return net.eval().requires_grad_(False)


def accuracy(net, x: torch.Tensor, y: torch.Tensor, *, noise_sigma: float = 0.0, batch_size: int = 512,
             generator: torch.Generator | None = None) -> float:
    """Top-1 accuracy of ``net`` on x (pixel space) plus N(0, noise_sigma²) noise (evaluation
    only: under no_grad), computed on the network's device. The noise is drawn on
    ``generator``'s device (a CPU generator: the same noise on every device)."""
    from ..diffusion.losses import randn_like

    correct, device = 0, module_device(net)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i: i + batch_size].to(device)
            if noise_sigma > 0:
                xb = xb + noise_sigma * randn_like(xb, generator)
            correct += int((net(xb).argmax(1) == y[i: i + batch_size].to(xb.device)).sum())
    return correct / max(len(x), 1)
