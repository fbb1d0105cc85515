"""Training a diffusion model: the data, the network and the EDM/VP/VE loss, fed to the one loop."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..persist import atomic_write_json
from ..data import load as load_data
from ..diffusion import schedules
from ..diffusion.losses import LOSSES
from ..diffusion.model import ModelSpec, build_denoiser, save_model
from ..diffusion.precond import Preconditioned
from ..errors import InputError
from ..images import to_model
from .config import TrainConfig
from .loop import fit

log = logging.getLogger("trustdiff.train")

#: the σ range each preconditioning is sampled over (EDM Table 1), in model units
SIGMA_RANGE = {
    "edm": (0.002, 80.0),
    "vp": (float(schedules.vp_sigma(1e-3)), float(schedules.vp_sigma(1.0))),
    "ve": (0.02, 100.0),
}


@dataclass(frozen=True)
class DiffusionJob:
    """A diffusion-model training run."""
    data: str = "digits"           # "digits" or a path (npz, MNIST idx, CIFAR batches, image folder)
    resolution: int = 16           # images are resized to resolution × resolution
    precond: str = "edm"           # edm | vp | ve (Karras et al. 2022, Table 1)
    size: str = "small"            # network size, trustdiff.nets.build_unet
    conditional: bool = True       # class-conditional, with a null class for guidance
    label_dropout: float = 0.1     # P(label → null) in training, for classifier-free guidance
    train: TrainConfig = field(default_factory=TrainConfig)


def model_spec(job: DiffusionJob, num_classes: int, channels: int) -> ModelSpec:
    if job.precond not in SIGMA_RANGE:
        raise InputError(f"precond: expected one of {sorted(SIGMA_RANGE)}, got {job.precond!r}")
    lo, hi = SIGMA_RANGE[job.precond]
    return ModelSpec(precond=job.precond, size=job.size, resolution=job.resolution, channels=channels,
                     num_classes=num_classes if job.conditional else None, sigma_min=lo, sigma_max=hi,
                     data=job.data)


def diffusion_loss_fn(spec: ModelSpec, label_dropout: float):
    """loss_fn(unet, x, y, generator) -> [N] for the training loop: x in [0, 1] is mapped to model
    space; with a class-conditional model each label becomes the null class with probability
    ``label_dropout`` (Ho & Salimans 2021)."""
    loss = LOSSES[spec.precond]

    def loss_fn(unet, x, y, generator):
        den = Preconditioned(unet, spec.precond, spec.sigma_data)
        cond = None
        if spec.num_classes is not None:
            drop = torch.rand(y.shape, generator=generator, device=y.device) < label_dropout
            cond = torch.where(drop, torch.full_like(y, spec.null_label), y)
        return loss(den, to_model(x), cond=cond, generator=generator)

    return loss_fn


@dataclass
class Prepared:
    """A job's inputs, loaded and validated before anything is written: the training images,
    the model spec and the fresh network."""
    x: torch.Tensor
    y: torch.Tensor
    spec: ModelSpec
    unet: torch.nn.Module
    data_name: str


def prepare_diffusion(job: DiffusionJob) -> Prepared:
    """Load the data and build the network; every bad input fails here, before the run folder
    is touched."""
    imageset = load_data(job.data, resolution=job.resolution, split="train", seed=job.train.seed)
    x, y = imageset.tensors()
    if job.conditional and imageset.num_classes < 1:
        raise InputError(f"{job.data}: a class-conditional model needs labels; pass --unconditional")
    spec = model_spec(job, imageset.num_classes, x.shape[1])
    torch.manual_seed(job.train.seed)              # the initial weights follow the seed
    unet, _ = build_denoiser(spec)
    return Prepared(x, y, spec, unet, imageset.name)


def train_diffusion(job: DiffusionJob, run_dir, *, resume: bool = False, prepared: Prepared | None = None,
                    device=None, precision: str = "fp32") -> Path:
    """Train on ``device`` at ``precision`` (see :func:`~trustdiff.train.fit`), then export the EMA
    network as a model folder ``run_dir/model`` (device-free safetensors). Returns its path."""
    run_dir = Path(run_dir)
    p = prepared or prepare_diffusion(job)
    result = fit(p.unet, diffusion_loss_fn(p.spec, job.label_dropout), (p.x, p.y), job.train, run_dir, resume=resume,
                 device=device, precision=precision)
    folder = run_dir / "model"
    if int(os.environ.get("RANK", "0")) == 0:          # under Accelerate only rank 0 writes
        save_model(folder, result.ema, p.spec)
        atomic_write_json(run_dir / "metrics.json", {"steps": result.step, "last_loss": result.last_loss,
                                                     "train_images": len(p.x), "data": p.data_name})
    return folder


def with_steps(job: DiffusionJob, steps: int) -> DiffusionJob:
    return replace(job, train=replace(job.train, steps=steps))
