"""Bench: the papers' networks on this CPU, and the GPU hours of the README's GPU-scale commands
from FLOPs counted on this repository's own definitions.

    python bench/scale_cpu.py [--batch 8 --steps 2] [--gpu-bf16-tflops 989 --gpu-fp32-tflops 67 --utilization 0.3]

For the DDPM CIFAR-10 UNet (``ddpm-cifar``, class-conditional as ``trustdiff train`` builds it),
WRN-28-10 and WRN-70-16, all at 3×32×32:

1. FLOPs per image of a forward pass and of a training step (forward, loss, backward), counted
   with ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2 FLOP; it counts
   convolutions and matmuls, not the optimizer update, normalizations or activations, which are
   memory-bound and a small part of the arithmetic). Attention is counted through PyTorch's math
   kernel: the CPU's fused attention kernel has no FLOP formula and would count as 0.
2. Seconds per training step at ``--batch`` on this CPU: the FLOP-counting step at that batch is
   the uncounted warm-up, then ``--steps`` timed steps (a count of steps, never a wall-time
   bound); achieved GFLOP/s as a fraction of this machine's fp32 matmul peak, measured in the same
   run by a 4096² sgemm. The steps: the EDM loss through the preconditioned UNet with Adam and
   gradient clipping (``trustdiff train``), label-smoothed cross-entropy with SGD-Nesterov for the
   WRNs (the TRADES update is counted, not timed: one is 27 forward passes).
3. The TRADES update (``advtrain train --preset cifar10-wang2023``: 10 PGD steps, β 5) is counted
   by running FlopCounterMode over one real ``trustdiff.advtrain.losses`` TRADES loss + backward
   at batch 1 (FLOPs are linear in the batch; checked on the forward passes), and the per-epoch
   model selection (``select_score``: PGD-40 CW on the held-out images) from counted runs at 1
   and 2 attack steps, the cost being exactly affine in the steps.
4. GPU hours = FLOP / (peak × utilization). The GPU and the utilization are parameters, printed
   with the result: H200 dense bf16 ~989 TFLOPS, fp32 (non-tensor) ~67 TFLOPS (NVIDIA H200
   datasheet); utilization 0.3 by default, an assumption (Ho et al. 2020's own throughput,
   printed as a cross-check, implies ~24% of a TPU v3-8).

Prints one table and writes bench/results/scale_cpu.json. Replaces bench/wrn_flops.py (a forward
count times a hand-written 26 forward-equivalents per TRADES update; counted here: 27, the PGD's
reference forward included).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trustdiff.advtrain import AdvTrainJob
from trustdiff.advtrain.losses import adversarial_loss_fn, smooth_ce
from trustdiff.advtrain.mix import iterations_per_epoch
from trustdiff.advtrain.training import PRESETS, select_score
from trustdiff.diffusion.model import build_denoiser
from trustdiff.images import to_model
from trustdiff.nets import build_classifier, parse_arch
from trustdiff.persist import atomic_write_json
from trustdiff.train import TrainConfig
from trustdiff.train.diffusion import DiffusionJob, diffusion_loss_fn, model_spec
from trustdiff.train.loop import make_optimizer

CIFAR10_TRAIN = 50_000                 # CIFAR-10 training images (the held-out slice comes out of them)
HO_2020 = dict(steps_per_s=21, batch=128, device="TPU v3-8", peak_bf16_tflops=420,
               source="Ho et al. 2020, Appendix B: the CIFAR-10 model trains at 21 steps/s at batch 128 on a TPU v3-8")


class _Global:
    """FlopCounterMode's module tracker, reduced to its "Global" total: the real tracker's module
    hooks make ``torch.autograd.grad`` on a leaf fail ("A leaf node was passed to
    _will_engine_execute_node"), which is what PGD's input gradient does."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count(fn):
    """(FLOP, fn()) with FlopCounterMode; attention through the math kernel so that it is counted."""
    fc = FlopCounterMode(display=False)
    fc.mod_tracker = _Global()
    with sdpa_kernel(SDPBackend.MATH), fc:
        out = fn()
    return float(fc.get_total_flops()), out


def sgemm_peak(n: int = 4096, reps: int = 5) -> float:
    """This machine's fp32 matmul rate, FLOP/s: the best of ``reps`` n×n×n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def cpu_model() -> str:
    """The CPU's model name and its matmul-relevant flags (from /proc/cpuinfo where there is one)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), platform.machine())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(have) or 'no AVX2'})"


def cli_default(command: str, param: str):
    """The default of a ``trustdiff`` flag, read from the CLI itself."""
    from trustdiff.cli import cli

    return next(p.default for p in cli.commands[command].params if p.name == param)


class Net:
    """One paper network on ``device`` with its training step: ``forward(x, y)``, ``step(x, y)`` →
    loss (``precision="bf16"``: under ``torch.autocast``), ``trades(x, y)`` (loss + backward)."""

    def __init__(self, name: str, device="cpu"):
        self.name, self.device = name, torch.device(device)
        torch.manual_seed(0)
        self.gen = torch.Generator(self.device).manual_seed(0)
        if name == "ddpm-cifar":
            job = DiffusionJob(resolution=32, size="ddpm-cifar")      # class-conditional, EDM, as `trustdiff train`
            self.spec = model_spec(job, num_classes=10, channels=3)
            self.net, self.den = build_denoiser(self.spec)
            self.loss_fn = diffusion_loss_fn(self.spec, job.label_dropout)
            self.cfg = job.train
            self.opt = make_optimizer("adam", self.net, self.cfg)
        else:
            self.job = AdvTrainJob(**{**PRESETS["cifar10-wang2023"], "arch": name})
            arch, kw = parse_arch(name)
            self.net = build_classifier(arch, in_channels=3, num_classes=10, resolution=32, **kw)
            self.cfg = TrainConfig(lr=self.job.lr, weight_decay=self.job.weight_decay, momentum=0.9, grad_clip=None)
            self.opt = make_optimizer("sgd", self.net, self.cfg)
            self.loss_fn = lambda net, x, y, g: smooth_ce(net(x), y, self.job.smoothing)
        self.params = sum(p.numel() for p in self.net.parameters())
        self.net.to(self.device)                 # in place: the optimizer holds the same parameters

    def forward(self, x, y):
        self.net.eval()
        with torch.no_grad():
            if self.name == "ddpm-cifar":
                return self.den(to_model(x), torch.full((len(x),), 1.0, device=x.device), cond=y)
            return self.net(x)

    def step(self, x, y, precision: str = "fp32") -> float:
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = self.loss_fn(self.net, x, y, self.gen).float().mean()
        loss.backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return float(loss.detach())

    def trades(self, x, y):
        j = self.job
        self.net.train()
        fn = adversarial_loss_fn(j.method, eps=j.eps, alpha=j.step_size, steps=j.attack_steps, norm=j.norm,
                                 beta=j.beta, smoothing=j.smoothing)
        fn(self.net, x, y, self.gen).mean().backward()
        self.net.zero_grad(set_to_none=True)


def batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def measure(name: str, args) -> dict:
    t0 = time.perf_counter()
    net = Net(name)
    row = {"params": net.params}
    f1, _ = count(lambda: net.forward(*batch(1)))
    f2, _ = count(lambda: net.forward(*batch(2)))
    row["forward_flop_per_image"] = f1
    row["forward_flop_linear_in_batch"] = f2 == 2 * f1
    xb, yb = batch(args.batch)
    fs, loss = count(lambda: net.step(xb, yb))          # also the warm-up step at this batch
    row["step_flop_per_image"] = fs / args.batch
    row["step_over_forward"] = fs / args.batch / f1
    secs = []
    for i in range(args.steps):
        xb, yb = batch(args.batch, seed=1 + i)
        t = time.perf_counter()
        loss = net.step(xb, yb)
        secs.append(time.perf_counter() - t)
        assert math.isfinite(loss), f"{name}: non-finite loss {loss}"
    s = sum(secs) / len(secs)
    row |= {"batch": args.batch, "timed_steps": args.steps, "seconds_per_step": s, "seconds_each": secs,
            "images_per_s": args.batch / s, "achieved_flop_per_s": fs / s}
    if name != "ddpm-cifar":
        ft, _ = count(lambda: net.trades(*batch(1)))
        row["trades_flop_per_image"] = ft
        row["trades_forward_equivalents"] = ft / f1
        evaluator = net.net.eval().requires_grad_(False)     # as train_adv's evaluator
        x1, y1 = batch(1)
        sel = [count(lambda k=k: select_score(evaluator, x1, y1, eps=net.job.eps, norm=net.job.norm, steps=k,
                                              seed=0))[0] for k in (1, 2)]
        per_step, fixed = sel[1] - sel[0], 2 * sel[0] - sel[1]
        row["select_flop_per_image"] = fixed + net.job.select_steps * per_step
        row["select_steps"] = net.job.select_steps
    row["seconds_total"] = time.perf_counter() - t0
    return row


def commands(rows: dict, args) -> dict:
    """The README's GPU-scale training commands: their FLOP from the counted per-image costs."""
    out = {}
    steps, bsz = 400_000, cli_default("train", "batch_size")
    u = rows["ddpm-cifar"]
    out["ddpm-cifar"] = {
        "command": f"trustdiff train --data cifar10:PATH --resolution 32 --size ddpm-cifar --steps {steps:,} (--batch {bsz}, the default)",
        "image_updates": steps * bsz, "flop": steps * bsz * u["step_flop_per_image"]}
    for name in ("wrn-28-10", "wrn-70-16"):
        job = AdvTrainJob(**{**PRESETS["cifar10-wang2023"], "arch": name})
        ipe = iterations_per_epoch(CIFAR10_TRAIN - job.holdout, job.batch_size)
        updates = job.epochs * ipe * job.batch_size
        r = rows[name]
        train, select = updates * r["trades_flop_per_image"], job.epochs * job.holdout * r["select_flop_per_image"]
        arch = "" if name == PRESETS["cifar10-wang2023"]["arch"] else f" --arch {name}"
        out[name] = {"command": f"trustdiff advtrain train --data cifar10:PATH --generated gen --preset cifar10-wang2023{arch}",
                     "epochs": job.epochs, "iters_per_epoch": ipe, "batch": job.batch_size, "image_updates": updates,
                     "attack_steps": job.attack_steps, "flop_trades": train, "flop_selection": select,
                     "flop": train + select}
    for name, c in out.items():
        f = c["flop"]
        c["gpu_hours_bf16"] = f / (args.gpu_bf16_tflops * 1e12 * args.utilization) / 3600
        c["gpu_hours_fp32"] = f / (args.gpu_fp32_tflops * 1e12 * args.utilization) / 3600
        c["this_cpu_days"] = f / rows[name]["achieved_flop_per_s"] / 86400
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="ddpm-cifar,wrn-28-10,wrn-70-16")
    ap.add_argument("--batch", type=int, default=8, help="training-step batch on the CPU")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per network (after one warm-up)")
    ap.add_argument("--gpu", default="NVIDIA H200 (SXM)")
    ap.add_argument("--gpu-bf16-tflops", type=float, default=989.0, help="dense bf16 tensor-core peak (NVIDIA H200 datasheet)")
    ap.add_argument("--gpu-fp32-tflops", type=float, default=67.0, help="fp32 non-tensor peak (NVIDIA H200 datasheet)")
    ap.add_argument("--utilization", type=float, default=0.3, help="assumed fraction of the peak a training run sustains")
    ap.add_argument("--json", type=Path, default=Path("bench/results/scale_cpu.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    peak = sgemm_peak()
    rows = {}
    for name in args.nets.split(","):
        rows[name] = measure(name, args)
        print(f"{name}: {rows[name]['seconds_total']:.0f} s", flush=True)
    for r in rows.values():
        r["fraction_of_sgemm_peak"] = r["achieved_flop_per_s"] / peak
    cmds = commands(rows, args) if set(rows) == {"ddpm-cifar", "wrn-28-10", "wrn-70-16"} else {}
    load_after = os.getloadavg()
    u = rows.get("ddpm-cifar")
    ho = None
    if u:
        implied = HO_2020["steps_per_s"] * HO_2020["batch"] * u["step_flop_per_image"]
        ho = HO_2020 | {"implied_tflop_per_s": implied / 1e12, "implied_fraction_of_peak": implied / 1e12 / HO_2020["peak_bf16_tflops"]}

    print(f"\nthis CPU: {cpu_model()}, {torch.get_num_threads()} threads, "
          f"fp32 sgemm peak {peak / 1e9:.0f} GFLOP/s (4096²), load average {load_before[0]:.2f} → {load_after[0]:.2f} "
          f"(shared machine: timings are under load)")
    print(f"assumed GPU: {args.gpu}, {args.gpu_bf16_tflops:g} TFLOPS dense bf16 / {args.gpu_fp32_tflops:g} TFLOPS fp32 "
          f"(NVIDIA H200 datasheet), utilization {args.utilization:g} (an assumption)")
    head = (f"{'network':<11} {'params':>8} {'fwd GF/img':>10} {'step GF/img':>11} {f's/step B={args.batch}':>11} "
            f"{'GFLOP/s':>8} {'of peak':>7} {'update GF/img':>13} {'run FLOP':>9} {'H200 h bf16':>11} {'fp32':>7} {'CPU days':>9}")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        c = cmds.get(name, {})
        upd = r.get("trades_flop_per_image", r["step_flop_per_image"])
        print(f"{name:<11} {r['params'] / 1e6:>7.2f}M {r['forward_flop_per_image'] / 1e9:>10.2f} "
              f"{r['step_flop_per_image'] / 1e9:>11.2f} {r['seconds_per_step']:>11.1f} {r['achieved_flop_per_s'] / 1e9:>8.1f} "
              f"{r['fraction_of_sgemm_peak']:>7.0%} {upd / 1e9:>13.1f} {c.get('flop', math.nan):>9.2e} "
              f"{c.get('gpu_hours_bf16', math.nan):>11.1f} {c.get('gpu_hours_fp32', math.nan):>7.0f} {c.get('this_cpu_days', math.nan):>9.0f}")
    print("update: the TRADES update (WRNs, 10 attack steps) or the diffusion training step; run FLOP adds the "
          "WRNs' per-epoch PGD-40 selection on the held-out images")
    for name, c in cmds.items():
        print(f"  {name}: {c['command']}: {c['image_updates'] / 1e6:.1f}M image-updates")
    if ho:
        print(f"cross-check: {ho['source']} → {ho['implied_tflop_per_s']:.0f} TFLOP/s with our counted step, "
              f"{ho['implied_fraction_of_peak']:.0%} of its ~{ho['peak_bf16_tflops']} TFLOPS bf16")
    seconds = time.perf_counter() - t0
    print(f"{seconds / 60:.1f} min")
    atomic_write_json(args.json, {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": load_after,
                    "note": "2 CPU cores shared with other engineers: timings are under the load shown"},
        "sgemm_peak_flop_per_s": peak,
        "assumptions": {"gpu": args.gpu, "bf16_dense_tflops": args.gpu_bf16_tflops, "fp32_tflops": args.gpu_fp32_tflops,
                        "source": "NVIDIA H200 datasheet", "utilization": args.utilization,
                        "cifar10_train_images": CIFAR10_TRAIN,
                        "flop_counting": "torch.utils.flop_counter.FlopCounterMode: convolutions and matmuls, a multiply-add = 2 FLOP; "
                                         "attention through the math kernel; optimizer, normalization, activations not counted"},
        "nets": rows, "commands": cmds, "ho_2020_cross_check": ho, "seconds": seconds,
    })


if __name__ == "__main__":
    main()
