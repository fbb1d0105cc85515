"""Bench: how close to the fp32 matmul peak can each hot loop get with this CPU's convolution kernels?

Issue 22 asks certification and training to reach 65% of the fp32 matmul peak. Every loop here
spends most of its FLOPs in convolutions, which run in oneDNN's kernels whether eager or compiled.
This bench records every convolution (forward and backward) that one pass of each loop makes (a
TorchDispatchMode at the aten level), replays each distinct call alone on random tensors of the same
shapes, and sums count × its best time. That sum is a floor on the loop's time with these kernels:
with every element-wise op fused away to nothing and every non-convolution matmul at the peak, the
loop could not be faster than

    ceiling = loop FLOPs / (Σ convolution time + non-convolution FLOPs / peak)

It is printed as a fraction of the fp32 matmul peak measured in the same run (2048² products, best
of a measurement at the start and one at the end), beside the loop's own fraction measured in the
same process, so the part of the gap that fusion could close (time outside convolutions) and the
part it could not (the kernels' own rate) are apart.

Where the time outside convolutions goes: three profiled passes (torch.profiler, self CPU time per
aten op) split into GroupNorm, SiLU, adds, copies, cat, div and mul, attention and linear
matmuls, and the rest. And a second, still optimistic bound, the **fusion bound**: a fused kernel
can remove an element-wise pass, but not the exp and division of each SiLU (and of its backward),
so every SiLU call is replayed alone too:

    fusion bound = loop FLOPs / (Σ convolution time + Σ SiLU time + non-convolution FLOPs / peak)

That is what the loop would reach if every GroupNorm, add, copy, cat and division cost nothing and
each SiLU ran at its own standalone speed: no fusion with these kernels can do better. Inside the
loop the convolutions run slower than alone (their inputs and weights are not in cache), so the
**in-loop bound** keeps them, and the SiLUs, at the speed the profile measured:

    in-loop bound = loop % of peak / (profiled share of convolutions + profiled share of SiLU)

Where a bound is below a target, that target is out of reach of fusion on this machine.

    python bench/conv_ceiling.py [--denoiser MODEL --classifier CLF] [--quick]

Loops, at the throughput bench's settings: certify (denoiser + classifier forward, batch 250),
generate (one denoiser call of a 256-image Heun batch), pgd (one input gradient through the
5-step purifier, 16 images × EOT 8 stacked), train (EDM loss forward + backward, batch 128).
Writes bench/results/conv_ceiling.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import EOT, SIGMA, flop_count, fresh_unet, networks, purifier  # noqa: E402
from train_digits import best_seconds, matmul_peak_gflops  # noqa: E402

from trustdiff.attacks.pgd import input_gradient  # noqa: E402
from trustdiff.certify import DenoisedClassifier  # noqa: E402
from trustdiff.persist import atomic_write_json  # noqa: E402
from trustdiff.runtime import tune_cpu_allocator  # noqa: E402
from trustdiff.train.diffusion import diffusion_loss_fn  # noqa: E402

aten = torch.ops.aten
CONV_OPS = (aten.conv2d.default, aten.convolution.default,      # conv2d: what inference mode dispatches
            aten.convolution_backward.default)
SILU_OPS = (aten.silu.default, aten.silu_.default, aten.silu_backward.default)
#: aten op name (as the profiler spells it) -> the category it is reported under
CATEGORIES = {"convolution": ("aten::mkldnn_convolution", "aten::convolution_backward"),
              "group_norm": ("aten::native_group_norm", "aten::native_group_norm_backward"),
              "silu": ("aten::silu", "aten::silu_", "aten::silu_backward"),
              "add": ("aten::add", "aten::add_"),
              "copy": ("aten::copy_",),
              "cat": ("aten::cat",),
              "div_mul": ("aten::div", "aten::div_", "aten::mul", "aten::mul_"),
              "attention_linear": ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm",
                                   "aten::_scaled_dot_product_flash_attention_for_cpu",
                                   "aten::_scaled_dot_product_flash_attention_for_cpu_backward")}


def _key(a):
    """A hashable stand-in for one argument: a tensor by its shape, a list as a tuple."""
    return ("T", tuple(a.shape)) if isinstance(a, torch.Tensor) else tuple(a) if isinstance(a, list) else a


class ConvRecorder(TorchDispatchMode):
    """Counts each distinct convolution call and each distinct SiLU call: the op and its
    arguments, tensors by shape."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()
        self.silu: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in CONV_OPS:
            self.calls[(func, tuple(_key(a) for a in args))] += 1
        elif func in SILU_OPS:
            self.silu[(func, tuple(_key(a) for a in args))] += 1
        return func(*args, **(kwargs or {}))


def profile_split(fn, passes: int = 3) -> dict:
    """Self CPU seconds of ``passes`` passes of ``fn`` by :data:`CATEGORIES` (and ``other``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(passes):
            fn()
    of = {name: cat for cat, names in CATEGORIES.items() for name in names}
    split = dict.fromkeys([*CATEGORIES, "other"], 0.0)
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            split[of.get(ev.key, "other")] += ev.self_cpu_time_total / 1e6
    return split


def replay_seconds(func, sig, repeats: int) -> tuple[float, float]:
    """(best seconds, FLOPs) of one call of ``func`` on random tensors of the recorded shapes."""
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(a[1], generator=g) if isinstance(a, tuple) and a[:1] == ("T",)
            else list(a) if isinstance(a, tuple) else a for a in sig]
    with torch.no_grad():
        flops = flop_count(lambda: func(*args))
        return best_seconds(lambda: func(*args), repeats, warmup=1), flops


def loops(args):
    """name -> a callable running one pass of that loop (fresh inputs each call)."""
    den, spec, clf = networks(args)
    f = DenoisedClassifier(den, clf, SIGMA)
    xc = torch.rand(args.cert_batch, 1, 16, 16)
    xg = torch.randn(args.gen_batch, 1, 16, 16)
    lg = torch.arange(args.gen_batch) % 10
    xa, ya = torch.rand(args.attack_images, 1, 16, 16), torch.arange(args.attack_images) % 10
    pur = purifier(clf, den, 5)
    unet, loss_fn = fresh_unet(spec), diffusion_loss_fn(spec, 0.1)
    xt, yt = torch.rand(args.train_batch, 1, 16, 16), torch.randint(0, 10, (args.train_batch,))

    def certify():
        with torch.inference_mode():
            f(xc)

    def generate():
        with torch.inference_mode():
            den(xg, 1.0, lg)

    def pgd():
        torch.manual_seed(0)
        input_gradient(pur, xa, ya, eot=EOT, eot_batch=EOT)

    def train():
        loss_fn(unet, xt, yt, torch.Generator().manual_seed(0)).mean().backward()
        unet.zero_grad(set_to_none=True)

    return {"certify": certify, "generate": generate, "pgd": pgd, "train": train}


def measure(name, fn, repeats: int) -> dict:
    fn()                                                         # warm-up: allocator, caches
    rec = ConvRecorder()
    with rec:
        fn()
    loop_flop = flop_count(fn)
    loop_s = best_seconds(fn, repeats)
    conv_s = conv_flop = 0.0
    for (func, sig), count in rec.calls.items():
        s, fl = replay_seconds(func, sig, repeats)
        conv_s += count * s
        conv_flop += count * fl
    silu_s = sum(count * replay_seconds(func, sig, repeats)[0] for (func, sig), count in rec.silu.items())
    split = profile_split(fn)
    r = {"loop_seconds": loop_s, "loop_gflop": loop_flop / 1e9, "conv_seconds": conv_s, "conv_gflop": conv_flop / 1e9,
         "conv_calls": sum(rec.calls.values()), "conv_distinct": len(rec.calls), "silu_seconds": silu_s,
         "silu_calls": sum(rec.silu.values()), "profiled_seconds": split}
    print(f"  {name}: loop {loop_flop / loop_s / 1e9:.0f} GFLOP/s, convolutions alone {conv_flop / conv_s / 1e9:.0f} GFLOP/s "
          f"({100 * conv_flop / loop_flop:.0f}% of the FLOPs, {100 * conv_s / loop_s:.0f}% of the loop's time), "
          f"SiLU alone {100 * silu_s / loop_s:.0f}% of it", flush=True)
    return r


def with_fractions(r: dict, peak: float) -> dict:
    loop_gflops = r["loop_gflop"] / r["loop_seconds"]
    other_gflop = max(r["loop_gflop"] - r["conv_gflop"], 0.0)
    ceiling = r["loop_gflop"] / (r["conv_seconds"] + other_gflop / peak)
    fusion = r["loop_gflop"] / (r["conv_seconds"] + r["silu_seconds"] + other_gflop / peak)
    total = sum(r["profiled_seconds"].values())
    shares = {k: v / total for k, v in r["profiled_seconds"].items()}
    return r | {"fusion_bound_gflops": fusion, "fusion_bound_fraction_of_peak": fusion / peak,
                "profiled_shares": shares,
                "inloop_bound_fraction_of_peak": loop_gflops / peak / (shares["convolution"] + shares["silu"]),
                "loop_gflops": loop_gflops, "loop_fraction_of_peak": loop_gflops / peak,
                "conv_gflops": r["conv_gflop"] / r["conv_seconds"],
                "conv_fraction_of_peak": r["conv_gflop"] / r["conv_seconds"] / peak,
                "ceiling_gflops": ceiling, "ceiling_fraction_of_peak": ceiling / peak,
                "time_outside_convolutions": 1 - r["conv_seconds"] / r["loop_seconds"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoiser", type=Path, default=None, help="a trained model folder (default: seeded random weights)")
    ap.add_argument("--classifier", type=Path, default=None, help="a trained classifier (default: seeded random weights)")
    ap.add_argument("--cert-batch", type=int, default=250)
    ap.add_argument("--gen-batch", type=int, default=256)
    ap.add_argument("--attack-images", type=int, default=16)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a smoke run (tiny batches; figures meaningless)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/conv_ceiling.json"))
    args = ap.parse_args()
    if args.quick:
        args.cert_batch, args.gen_batch, args.attack_images, args.train_batch, args.repeats = 4, 4, 1, 4, 1
    tune_cpu_allocator()                                         # as every trustdiff command does
    t0 = time.time()
    peaks = [matmul_peak_gflops()]
    raw = {name: measure(name, fn, args.repeats) for name, fn in loops(args).items()}
    peaks.append(matmul_peak_gflops())
    peak = max(peaks)
    res = {"threads": torch.get_num_threads(), "torch": torch.__version__, "peak_gflops": peak, "peak_range": peaks,
           "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "loops": {k: with_fractions(v, peak) for k, v in raw.items()}, "seconds": time.time() - t0}
    print(f"fp32 matmul peak {peak:.0f} GFLOP/s (range {min(peaks):.0f}-{max(peaks):.0f})")
    print(f"{'loop':<10}{'loop % peak':>12}{'conv % peak':>12}{'ceiling % peak':>16}{'fusion bound % peak':>21}"
          f"{'in-loop bound % peak':>22}{'time outside conv':>19}")
    for k, v in res["loops"].items():
        print(f"{k:<10}{100 * v['loop_fraction_of_peak']:>11.0f}%{100 * v['conv_fraction_of_peak']:>11.0f}%"
              f"{100 * v['ceiling_fraction_of_peak']:>15.0f}%{100 * v['fusion_bound_fraction_of_peak']:>20.0f}%"
              f"{100 * v['inloop_bound_fraction_of_peak']:>21.0f}%{100 * v['time_outside_convolutions']:>18.0f}%")
    cats = [*CATEGORIES, "other"]
    print("three profiled passes, share of self CPU time (%): " + " ".join(f"{c:>8.8}" for c in cats))
    for k, v in res["loops"].items():
        print(f"  {k:<44}" + " ".join(f"{100 * v['profiled_shares'][c]:>8.1f}" for c in cats))
    atomic_write_json(args.out, res)
    print(f"wrote {args.out} ({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
