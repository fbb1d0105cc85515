"""Bench: train a class-conditional EDM model on digits (16×16) and measure it.

Reports, and writes to bench/results/train_digits.json:
* FD-digits of 1,000 generated images vs. the digits test split at Heun NFE 35 / 19 / 9 and
  DDPM-ancestral 250 steps, each as a ratio to the real-data floor FD(train, test);
* training images/s and the achieved GFLOP/s of the training step as a fraction of this machine's
  fp32 matmul peak, measured in the same run.

    python bench/train_digits.py [--minutes 25] [--size small] [--out bench/results/train_digits]

Target (issue 3): FD ≤ 2× the floor at NFE 35 within 30 minutes of training on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from trustdiff.persist import atomic_write_json
from trustdiff.data import load
from trustdiff.diffusion.model import load_model, sample
from trustdiff.diffusion.samplers import nfe
from trustdiff.images import make_grid, save_png
from trustdiff.train.feature_net import fd_report
from trustdiff.train import TrainConfig
from trustdiff.train.diffusion import DiffusionJob, diffusion_loss_fn, model_spec, train_diffusion
from trustdiff.diffusion.model import build_denoiser


def best_seconds(fn, repeats: int = 3, warmup: int = 0) -> float:
    """The fastest of ``repeats`` timed calls of fn(), after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, shape: tuple[int, int, int] | None = None,
                       dtype: torch.dtype = torch.float32) -> float:
    """The machine's matmul rate in ``dtype`` (fp32 unless asked): best of ``repeats`` n×n @ n×n
    products (2n³ FLOP each), or of m×k @ k×p products for ``shape`` = (m, k, p) (2mkp FLOP each)."""
    m, k, p = shape or (n, n, n)
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, p, dtype=dtype)
    return 2 * m * k * p / best_seconds(lambda: a @ b, repeats, warmup=1) / 1e9


def train_step_gflop(job: DiffusionJob) -> float:
    """FLOP of one training step (forward + backward of the loss on one batch), counted by
    torch's FlopCounterMode (matmuls and convolutions)."""
    spec = model_spec(job, 10, 1)
    unet, _ = build_denoiser(spec)
    x = torch.rand(job.train.batch_size, 1, job.resolution, job.resolution)
    y = torch.randint(0, 10, (job.train.batch_size,))
    loss_fn = diffusion_loss_fn(spec, job.label_dropout)
    with FlopCounterMode(display=False) as counter:
        loss_fn(unet, x, y, torch.Generator().manual_seed(0)).mean().backward()
    return counter.get_total_flops() / 1e9


def bench_job(steps: int, *, size: str = "small", batch: int = 128, lr: float = 2e-3,
              conditional: bool = True) -> DiffusionJob:
    """The training bench's diffusion job (the model the purify and adversarial-training benches
    use); ``conditional=False``: the same budget for an unconditional model."""
    return DiffusionJob(size=size, conditional=conditional,
                        train=TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=200, ema_halflife_kimg=50.0,
                                          checkpoint_every=500, log_every=100, seed=0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=25.0,
                    help="training budget: sets the step count from a timed probe of the step, unless --steps")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps (a count reproduces a model elsewhere; the committed run trained 2523)")
    ap.add_argument("--skip-fd", action="store_true", help="train only: no sampling and FD (other benches' model)")
    ap.add_argument("--size", default="small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-fd", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("bench/results/train_digits"))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"threads": torch.get_num_threads()}

    res["peak_gflops"] = matmul_peak_gflops()
    print(f"fp32 matmul peak: {res['peak_gflops']:.1f} GFLOP/s")

    # steps from a short timing of the real step, so the run fits the budget
    probe = DiffusionJob(size=args.size, train=TrainConfig(batch_size=args.batch))
    res["train_step_gflop"] = train_step_gflop(probe)
    spec = model_spec(probe, 10, 1)
    unet, _ = build_denoiser(spec)
    loss_fn = diffusion_loss_fn(spec, 0.1)
    opt = torch.optim.Adam(unet.parameters(), 1e-4)
    x, y = torch.rand(args.batch, 1, 16, 16), torch.randint(0, 10, (args.batch,))
    times = []
    for _ in range(4):
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(unet, x, y, None).mean().backward()
        opt.step()
        times.append(time.perf_counter() - t)
    step_s = min(times[1:])
    steps = args.steps or int(args.minutes * 60 / (step_s * 1.08))       # ~8% for EMA, logging, checkpoints
    job = bench_job(steps, size=args.size, batch=args.batch, lr=args.lr)
    print(f"training {steps} steps of batch {args.batch}" + ("" if args.steps else f" (~{args.minutes} min)"))
    t0 = time.time()
    model_dir = train_diffusion(job, out / "train", resume=args.resume)
    res["train_seconds"] = time.time() - t0
    res["train_steps"] = steps
    res["train_img_per_s"] = steps * args.batch / res["train_seconds"]
    res["train_gflops_achieved"] = res["train_step_gflop"] * steps / res["train_seconds"]
    res["train_fraction_of_peak"] = res["train_gflops_achieved"] / res["peak_gflops"]
    print(f"trained in {res['train_seconds']/60:.1f} min: {res['train_img_per_s']:.0f} img/s, "
          f"{res['train_gflops_achieved']:.1f} GFLOP/s = {100*res['train_fraction_of_peak']:.1f}% of matmul peak")

    if args.skip_fd:
        return
    den, spec = load_model(model_dir)
    train_set, test_set = load("digits", resolution=16, split="train"), load("digits", resolution=16, split="test")
    labels = torch.arange(args.n_fd) % 10
    res["samplers"] = {}
    for name, sampler, steps_ in [("heun-nfe35", "heun", 18), ("heun-nfe19", "heun", 10), ("heun-nfe9", "heun", 5),
                                  ("ddpm-250", "ddpm", 250)]:
        t = time.time()
        with torch.no_grad():
            fake = torch.cat([sample(den, spec, range(i, min(i + 500, args.n_fd)), labels=labels[i: i + 500],
                                     sampler=sampler, steps=steps_) for i in range(0, args.n_fd, 500)])
        secs = time.time() - t
        r = fd_report(train_set, test_set, fake, cache_dir=out / "cache")
        r |= {"nfe": nfe(sampler, steps_), "sample_seconds": secs}
        res["samplers"][name] = r
        save_png(out / f"grid-{name}.png", make_grid(fake[:100], nrow=10))
        print(f"{name:11s} NFE {r['nfe']:3d}: {r['fd_name']} {r['fd']:.3f}  floor {r['fd_floor']:.3f}  "
              f"ratio {r['fd_ratio']:.2f}  ({secs:.0f}s for {args.n_fd} images)")
    res["target_met"] = res["samplers"]["heun-nfe35"]["fd_ratio"] <= 2.0 and res["train_seconds"] <= 1800
    atomic_write_json(out.parent / "train_digits.json", res)
    print(json.dumps({k: v for k, v in res.items() if k != "samplers"}, indent=1))


if __name__ == "__main__":
    main()
