"""Adversarial training on real + generated data (Wang et al. 2023, *Better Diffusion Models
Further Improve Adversarial Training*), through the one training loop.

    job = AdvTrainJob(data="digits", generated="runs/gen", n_generated=10_000, arch="small-cnn", ...)
    summary = train_adv(job, "runs/at")        # → runs/at/{best,last}/ classifier folders, epochs.jsonl

Defaults are the paper's CIFAR-10 settings: TRADES (β = 5) with a 10-step L∞ PGD at ε = 8/255
(step ε/4), label smoothing 0.1, SGD with Nesterov momentum 0.9, lr 0.2 at batch 512 with a
cosine schedule after warm-up, weight decay 5e-4 (none on normalization layers), weight EMA
τ = 0.995, 0.3 real / 0.7 generated per batch, WRN-28-10, 1,024 training images held out.

An "epoch" is ⌈n_real / B⌉ updates whatever the generated set's size (:mod:`.mix`). After every
epoch the EMA network is evaluated on the held-out slice with PGD-40 on the CW margin loss; the
best epoch's network is kept (``best/``), next to the last one (``last/``): the robust-overfitting
comparison. A killed run resumes with ``resume=True`` at the same step and the same batches.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..attacks import pgd
from ..checkpoint import latest_checkpoint, load_checkpoint
from ..data import load as load_data
from ..errors import InputError
from ..nets import build_classifier, parse_arch
from ..persist import atomic_write_json
from ..train import TrainConfig, fit
from ..train.classifier import save_classifier
from .generated import load_generated
from .losses import METHODS, adversarial_loss_fn
from .mix import iterations_per_epoch, mixed_stream

log = logging.getLogger("trustdiff.advtrain")
EPOCHS_LOG = "epochs.jsonl"


@dataclass(frozen=True)
class AdvTrainJob:
    data: str = "digits"
    resolution: int | None = None       # None: the data's own (digits: 16)
    generated: str | None = None        # a generated shard folder or .npz (None: real data only)
    n_generated: int | None = None      # the first n generated images (None: all)
    real_fraction: float = 0.3
    method: str = "trades"              # "trades" or "madry"
    beta: float = 5.0
    eps: float = 8 / 255
    norm: str = "linf"
    attack_steps: int = 10
    alpha: float | None = None          # None: ε/4 (2/255 at 8/255)
    smoothing: float = 0.1
    arch: str = "wrn-28-10"
    width: int = 32                     # small-cnn only
    epochs: int = 400
    iters_per_epoch: int | None = None  # None: ⌈n_real / batch_size⌉
    batch_size: int = 512
    lr: float = 0.2
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    ema_decay: float = 0.995
    holdout: int = 1024                 # training images held out for model selection
    select_steps: int = 40              # PGD-k (CW loss) on the held-out slice after each epoch
    augment: str = "none"               # trustdiff.advtrain.augment.AUGMENTATIONS, on every training batch
    flip: bool = True                   # the augmentations' horizontal flip (off for digits: a mirrored digit is not one)
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"method: expected one of {METHODS}, got {self.method!r}")
        parse_arch(self.arch)
        if not 0 < self.real_fraction <= 1:
            raise InputError(f"real_fraction: expected in (0, 1], got {self.real_fraction!r}")
        for name in ("epochs", "batch_size", "attack_steps", "select_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not self.eps > 0:
            raise InputError(f"eps: expected > 0, got {self.eps!r}")
        from .augment import check_augment
        check_augment(self.augment)

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / 4


#: named settings of ``advtrain train``: a data set's budget, and the paper's GPU-scale one
PRESETS = {
    # bench/advtrain_digits.py's settings: 16×16 digits, L∞ 0.1, a small CNN, 40 × 50 updates of 128
    "digits": dict(arch="small-cnn", width=16, eps=0.1, epochs=40, iters_per_epoch=50, batch_size=128, lr=0.1,
                   warmup_epochs=2, holdout=256, flip=False),
    # Wang et al. (2023), CIFAR-10 L∞ 8/255: WRN-28-10, batch 512, lr 0.2, 400 epochs (GPUs only)
    "cifar10-wang2023": dict(arch="wrn-28-10", width=32, eps=8 / 255, epochs=400, iters_per_epoch=None, batch_size=512,
                             lr=0.2, warmup_epochs=10, holdout=1024, flip=True),
}


def split_holdout(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices) of n images: a seeded permutation, the last ``holdout`` out."""
    if not 0 <= holdout < n:
        raise InputError(f"holdout: expected 0 <= holdout < {n} (the training images), got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return perm[: n - holdout].sort().values, perm[n - holdout:].sort().values


def prepare(job: AdvTrainJob):
    """Real training images (minus the held-out slice), the generated ones, the network, the
    config; every input error is raised here, before anything is written."""
    real = load_data(job.data, resolution=job.resolution, split="train", seed=job.seed)
    x, y = real.tensors()
    tr, ho = split_holdout(len(x), job.holdout, job.seed)
    x_real, y_real, x_ho, y_ho = x[tr], y[tr], x[ho], y[ho]
    if job.generated is not None:
        x_gen, y_gen = load_generated(job.generated, job.n_generated)
        if x_gen.shape[1:] != x_real.shape[1:]:
            raise InputError(f"generated images: expected {tuple(x_real.shape[1:])} like the real ones, got {tuple(x_gen.shape[1:])}")
    else:
        x_gen, y_gen = x_real[:0], y_real[:0]
    num_classes = int(y.max()) + 1
    if len(y_gen) and int(y_gen.max()) >= num_classes:
        raise InputError(f"generated labels: expected 0..{num_classes - 1}, got up to {int(y_gen.max())}")
    ipe = job.iters_per_epoch or iterations_per_epoch(len(x_real), job.batch_size)
    cfg = TrainConfig(steps=job.epochs * ipe, batch_size=job.batch_size, lr=job.lr, weight_decay=job.weight_decay,
                      warmup_steps=job.warmup_epochs * ipe, schedule="cosine", momentum=0.9, grad_clip=None,
                      ema_decay=job.ema_decay, checkpoint_every=ipe, log_every=max(1, min(50, ipe)), seed=job.seed)
    data = (torch.cat([x_real, x_gen]), torch.cat([y_real, y_gen]))
    return data, len(x_real), (x_ho, y_ho), num_classes, ipe, cfg


def build_net(job: AdvTrainJob, channels: int, resolution: int, num_classes: int):
    arch, kw = parse_arch(job.arch)
    if arch == "small-cnn":
        kw["width"] = job.width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        return build_classifier(arch, in_channels=channels, num_classes=num_classes, resolution=resolution, **kw)


@torch.no_grad()
def _accuracy(net, x, y, batch=512) -> int:
    return sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))


def select_score(net, x, y, *, eps: float, norm: str, steps: int, seed: int, batch: int = 512) -> dict:
    """Clean and PGD-k (CW margin loss, step 2.5·ε/k, random start) accuracy on the held-out slice:
    the model-selection criterion. Seeded, so the same network always gets the same score."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    robust = 0
    for i in range(0, len(x), batch):
        xa = pgd(net, x[i:i + batch], y[i:i + batch], eps=eps, alpha=2.5 * eps / steps, steps=steps, norm=norm,
                 loss="cw", generator=gen)
        robust += _accuracy(net, xa, y[i:i + batch])
    n = len(x)
    return {"n": n, "clean": _accuracy(net, x, y) / n, "robust": robust / n}


def _read_epochs(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    path = run_dir / EPOCHS_LOG
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if up_to_step is None or r["step"] <= up_to_step]


def _write_epochs(run_dir: Path, rows: list[dict]) -> None:
    from ..persist import atomic_write_bytes
    atomic_write_bytes(run_dir / EPOCHS_LOG, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def train_adv(job: AdvTrainJob, run_dir, *, resume: bool = False, progress: bool = True, device=None,
              precision: str = "fp32") -> dict:
    """Train on ``device`` at ``precision`` (:func:`~trustdiff.train.fit`; the training attack runs
    inside the loss, so under bf16 it does too), select on the held-out slice after each epoch (on
    the training device, fp32), save; returns (and writes to ``run_dir/metrics.json``) the
    per-epoch table's best and last rows."""
    run_dir = Path(run_dir)
    data, n_real, (x_ho, y_ho), num_classes, ipe, cfg = prepare(job)
    cfg = TrainConfig(**{**asdict(cfg), "progress": progress})
    c, r = data[0].shape[1], data[0].shape[-1]
    net = build_net(job, c, r, num_classes)
    evaluator = build_net(job, c, r, num_classes).eval().requires_grad_(False)
    meta = {"data": job.data, "method": job.method, "eps": job.eps, "norm": job.norm, "n_real": n_real,
            "n_generated": len(data[0]) - n_real, "arch_name": job.arch, "augment": job.augment,
            "flip": job.flip}

    ck = latest_checkpoint(run_dir) if resume else None
    rows = _read_epochs(run_dir, up_to_step=int(ck.name.split("-")[1]) if ck is not None else 0)
    if device is not None:
        net.to(device)                   # (fit moves it too; here so that on_epoch sees it before fit starts)

    def on_epoch(step: int) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return
        dev = next(net.parameters()).device                  # the training device (a GPU at scale)
        load_checkpoint(latest_checkpoint(run_dir), {"ema": evaluator}, verify=False)
        score = select_score(evaluator.to(dev), x_ho.to(dev), y_ho.to(dev), eps=job.eps, norm=job.norm,
                             steps=job.select_steps, seed=job.seed)
        row = {"epoch": step // ipe, "step": step, "holdout_clean": score["clean"], "holdout_robust": score["robust"],
               "n": score["n"]}
        best = max((r["holdout_robust"] for r in rows), default=-math.inf)
        rows.append(row)
        _write_epochs(run_dir, rows)
        if row["holdout_robust"] > best:
            save_classifier(run_dir / "best", evaluator, epoch=row["epoch"], step=step, **meta)
        if progress:
            log.info("epoch %d: held-out clean %.3f, PGD-%d %.3f", row["epoch"], score["clean"], job.select_steps, score["robust"])

    if ck is not None and not any(r["step"] == int(ck.name.split("-")[1]) for r in rows):
        on_epoch(int(ck.name.split("-")[1]))      # the kill came between a checkpoint and its evaluation
    result = fit(net, adversarial_loss_fn(job.method, eps=job.eps, alpha=job.step_size, steps=job.attack_steps,
                                          norm=job.norm, beta=job.beta, smoothing=job.smoothing, augment=job.augment,
                                          num_classes=num_classes, flip=job.flip),
                 data, cfg, run_dir, resume=resume, optimizer="sgd", on_checkpoint=on_epoch,
                 stream=mixed_stream(n_real, job.real_fraction), device=device, precision=precision)
    if int(os.environ.get("RANK", "0")) == 0:
        save_classifier(run_dir / "last", result.ema.eval().cpu(), epoch=result.step // ipe, step=result.step, **meta)
    best = max(rows, key=lambda r: r["holdout_robust"]) if rows else None
    summary = {"job": asdict(job), "iters_per_epoch": ipe, "steps": result.step, "best": best,
               "last": rows[-1] if rows else None, **meta}
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(run_dir / "metrics.json", summary)
    return summary
