"""Model-level removal attacks on a watermarked diffusion model: does the model still carry the key?

* :func:`prune` — magnitude pruning: in every weight matrix / kernel the ``fraction`` of entries
  smallest in |w| set to 0 (biases and norms untouched);
* :func:`quantize_int8` — symmetric per-output-channel int8 weights, w ≈ s·round(w / s) with
  s = max|w| / 127 over the channel, stored back as float (what int8 inference computes);
* :func:`finetune` — continue training the watermarked network on clean data for k steps with the
  one training loop (resumable; each k of a curve continues the same run);

next to the weight-noise sweep of :func:`trustdiff.watermark.sweeps.weight_noise_sweep`. Each
returns a new network; the one given is not changed.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError


def _weights(net: nn.Module):
    """The weight matrices and kernels of ``net`` (parameters of 2 or more dimensions)."""
    return [p for p in net.parameters() if p.ndim >= 2]


def prune(net: nn.Module, fraction: float) -> nn.Module:
    """A copy of ``net`` with the ``fraction`` smallest-|w| entries of each weight tensor zeroed."""
    if not 0 <= fraction < 1:
        raise InputError(f"prune: expected a fraction in [0, 1), got {fraction!r}")
    out = copy.deepcopy(net)
    with torch.no_grad():
        for w in _weights(out):
            k = int(fraction * w.numel())
            if k < 1:
                continue
            cut = w.abs().flatten().kthvalue(k).values
            w.masked_fill_(w.abs() <= cut, 0.0)
    return out


def quantize_int8(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose weight tensors are rounded to 255 symmetric levels per output channel."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for w in _weights(out):
            s = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0
            s = s.view(-1, *([1] * (w.ndim - 1)))
            w.copy_((w / s).round().clamp(-127, 127) * s)
    return out


def zero_fraction(net: nn.Module) -> float:
    """The share of weight-tensor entries that are exactly 0 (a check of :func:`prune`)."""
    ws = _weights(net)
    return float(sum(int((w == 0).sum()) for w in ws) / max(sum(w.numel() for w in ws), 1))


def finetune(model_dir, data: str, steps: int, run_dir, *, base_job=None, allow_pickle: bool = False,
             device=None, precision: str = "fp32"):
    """The watermarked model of ``model_dir`` trained on for ``steps`` steps on clean ``data``
    (its training split, at the model's resolution) in ``run_dir``; returns (denoiser, spec) of
    the EMA. A second call with more steps continues the same run (its checkpoints), so a curve
    over k costs the largest k. ``base_job``: the :class:`~trustdiff.train.diffusion.DiffusionJob`
    whose optimiser settings are used (default: the recipe's, at constant learning rate)."""
    from ..checkpoint import latest_checkpoint
    from ..data import load as load_data
    from ..diffusion.model import load_model
    from ..diffusion.precond import Preconditioned
    from ..train import fit
    from ..train.diffusion import diffusion_loss_fn
    from .recipe import default_diffusion

    if steps < 1:
        raise InputError(f"finetune: expected steps >= 1, got {steps!r}")
    den, spec = load_model(model_dir, allow_pickle=allow_pickle)
    job = base_job or default_diffusion()
    cfg = replace(job.train, steps=int(steps), warmup_steps=0, checkpoint_every=min(job.train.checkpoint_every, int(steps)))
    imageset = load_data(data, resolution=spec.resolution, split="train", seed=cfg.seed)
    x, y = imageset.tensors()
    if x.shape[1] != spec.channels:
        raise InputError(f"finetune data {data}: {x.shape[1]}-channel images, the model takes {spec.channels}")
    run_dir = Path(run_dir)
    resume = latest_checkpoint(run_dir) is not None
    net = copy.deepcopy(den.net).train().requires_grad_(True)
    result = fit(net, diffusion_loss_fn(spec, job.label_dropout), (x, y), cfg, run_dir,
                 resume=resume, device=device, precision=precision)
    return Preconditioned(result.ema.eval().requires_grad_(False), spec.precond, spec.sigma_data), spec
