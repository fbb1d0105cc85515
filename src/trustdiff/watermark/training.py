"""Training the codec with the one training loop (:func:`trustdiff.train.fit`).

    job = CodecJob(data="digits", resolution=32, n_bits=64, train=TrainConfig(steps=4000, batch_size=64, lr=1e-4))
    folder = train_codec(job, "runs/codec")         # → runs/codec/codec (config.json + model.safetensors)

The model the loop trains is :class:`~trustdiff.watermark.codec.CodecObjective` (the codec plus its
L2-schedule buffers), so resume, EMA, the non-finite guard and checkpoints come from the loop, and a
killed run resumed with ``resume=True`` continues the γ schedule exactly. The exported codec is the
EMA's (``export="ema"``) or the raw weights' (``"raw"``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..persist import atomic_write_json
from ..data import load as load_data
from ..errors import InputError
from ..images import from_uint8, to_uint8
from ..metrics import proportion, psnr, ssim
from ..nets.codec import Codec
from ..train import TrainConfig, fit
from .codec import CODEC_DIR, CodecObjective, decode_bits, encode, fair_bits, save_codec
from .keys import random_keys
from .stats import bit_accuracy

log = logging.getLogger("trustdiff.watermark")
CODEC_LOG = "codec_log.jsonl"


def default_codec_train() -> TrainConfig:
    """The recipe's optimiser settings (Adam, lr 1e-4, batch 64), a short EMA."""
    return TrainConfig(steps=4000, batch_size=64, lr=1e-4, warmup_steps=0, grad_clip=None,
                       ema_halflife_kimg=5.0, checkpoint_every=500, log_every=50)


@dataclass(frozen=True)
class CodecJob:
    """A codec training run (all of it lands in the run folder's config.json)."""
    data: str = "digits"
    resolution: int = 32
    n_bits: int = 64
    width: int = 32            # recipe: 32
    enc_depth: int = 4         # recipe: 4 (32×32 → 2×2)
    dec_depth: int = 5         # recipe: 5 (32×32 → 1×1)
    hidden: int = 512          # recipe: 512
    dec_width: int | None = None   # decoder base width; None: = width (recipe: 32)
    gamma: float = 10.0        # recipe: 10
    l2_await: int = 1000       # recipe: 1000 steps after bit accuracy first passes 0.9
    l2_ramp: int = 3000        # recipe: then linearly up over 3000 steps
    activate_acc: float = 0.9
    distortions: tuple = ()    # training distortions (beyond the recipe): "robust" or kinds of distortions.TRAIN_RANGES
    export: str = "ema"        # "ema" or "raw" weights into the codec folder
    eval_images: int = 512     # held-out images for the figures in metrics.json
    fair_bits: bool = True     # decide each bit at its median logit on the clean training images (codec.fair_bits; recipe: at 0)
    train: TrainConfig = field(default_factory=default_codec_train)

    def __post_init__(self):
        if self.export not in ("ema", "raw"):
            raise InputError(f"export: expected 'ema' or 'raw', got {self.export!r}")
        from .distortions import check_train_kinds

        # the preset name is expanded here, so a run's config.json names the kinds it trained with
        object.__setattr__(self, "distortions", check_train_kinds(self.distortions))


def build_codec(job: CodecJob, channels: int) -> Codec:
    """The fresh codec of ``job``; its initial weights follow ``job.train.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.train.seed)
        return Codec(resolution=job.resolution, channels=channels, n_bits=job.n_bits, width=job.width,
                     enc_depth=job.enc_depth, dec_depth=job.dec_depth, hidden=job.hidden, dec_width=job.dec_width)


def codec_figures(codec: Codec, x: torch.Tensor, *, seed: int, quantize: bool = True) -> dict:
    """Held-out figures of a codec: random per-image keys (from ``seed``, on a CPU generator: the
    same keys on every device), E(x, key) (rounded to uint8 as when written to disk, with
    ``quantize``), then Bit-Acc, PSNR and SSIM against x; computed on x's device."""
    keys = random_keys(len(x), codec.n_bits, generator=torch.Generator().manual_seed(seed))
    xw = encode(codec, x, keys)
    if quantize:
        xw = from_uint8(to_uint8(xw)).to(x.device)
    acc = bit_accuracy(decode_bits(codec, xw), keys)
    p, s = psnr(xw, x), ssim(xw, x)
    perfect = int((acc == 1).sum())
    return {"images": len(x), "bit_acc": float(acc.mean()), "bit_acc_min": float(acc.min()),
            "all_bits_right": proportion(perfect, len(x)), "psnr": float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else float("inf"),
            "psnr_min": float(p.min()), "ssim": float(s.mean()), "quantized_uint8": quantize, "key_seed": seed}


def _log_writer(run_dir: Path, objective: CodecObjective):
    path = run_dir / CODEC_LOG

    def on_checkpoint(step: int) -> None:
        rec = {"step": step, "bit_acc": float(objective.last_bit_acc), "bce": float(objective.last_bce),
               "mse": float(objective.last_mse), "gamma": float(objective.last_gamma), "l2_start": int(objective.l2_start)}
        with open(path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    return on_checkpoint


def _truncate_log(run_dir: Path, step: int) -> None:
    path = run_dir / CODEC_LOG
    if path.exists():
        keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= step]
        path.write_text("".join(l + "\n" for l in keep))


def prepare_codec(job: CodecJob):
    """Load the training images and build the codec; bad input fails here, before any writing."""
    imageset = load_data(job.data, resolution=job.resolution, split="train", seed=job.train.seed)
    x, y = imageset.tensors()
    codec = build_codec(job, x.shape[1])
    objective = CodecObjective(codec, gamma=job.gamma, l2_await=job.l2_await, l2_ramp=job.l2_ramp,
                               activate_acc=job.activate_acc, distortions=job.distortions)
    return x, y, objective, imageset.name


def train_codec(job: CodecJob, run_dir, *, resume: bool = False, device=None, precision: str = "fp32") -> Path:
    """Train the codec of ``job`` in ``run_dir`` on ``device`` at ``precision`` (see
    :func:`~trustdiff.train.fit`) and write ``run_dir/codec`` and ``run_dir/metrics.json``
    (held-out Bit-Acc, PSNR, SSIM on the data's test split, measured on the training device).
    Returns the codec folder."""
    from ..checkpoint import latest_checkpoint
    from ..runtime import module_device

    run_dir = Path(run_dir)
    x, y, objective, name = prepare_codec(job)
    ck = latest_checkpoint(run_dir) if resume else None
    run_dir.mkdir(parents=True, exist_ok=True)
    _truncate_log(run_dir, int(ck.name.split("-")[1]) if ck is not None else 0)
    result = fit(objective, lambda net, xb, yb, g: net(xb, g), (x, y), job.train, run_dir, resume=resume,
                 on_checkpoint=_log_writer(run_dir, objective), device=device, precision=precision)
    trained = (result.ema if job.export == "ema" else result.model).codec.eval().requires_grad_(False)
    dev = module_device(trained)                                  # the training device
    if job.fair_bits:
        trained = fair_bits(trained, x.to(dev))
    test = load_data(job.data, resolution=job.resolution, split="test", seed=job.train.seed)
    xt = test.tensors()[0][: job.eval_images]
    figures = codec_figures(trained, xt.to(dev), seed=job.train.seed + 1)
    train_fig = codec_figures(trained, x[: job.eval_images].to(dev), seed=job.train.seed + 2)
    l2_start = int(result.model.l2_start)
    facts = {"data": job.data, "data_name": name, "steps": result.step, "seed": job.train.seed, "export": job.export,
             "l2_start": l2_start, "gamma": job.gamma, "l2_await": job.l2_await, "l2_ramp": job.l2_ramp,
             "distortions": list(job.distortions),
             "bit_offsets_from": f"median logits on the {len(x)} clean training images" if job.fair_bits else "none (0)"}
    folder = save_codec(run_dir / CODEC_DIR, trained, **facts, heldout=figures)
    atomic_write_json(run_dir / "metrics.json", {**facts, "heldout": figures, "train": train_fig,
                                                 "final_gamma": float(result.model.last_gamma),
                                                 "last_batch_bit_acc": float(result.model.last_bit_acc),
                                                 "last_loss": result.last_loss})
    return folder


def with_steps(job: CodecJob, steps: int, **train_kw) -> CodecJob:
    return replace(job, train=replace(job.train, steps=steps, **train_kw))


def job_json(job: CodecJob) -> dict:
    return asdict(job)
