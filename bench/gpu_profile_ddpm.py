"""Why a ddpm-cifar training step is slower in bf16 than in fp32 on a GPU: time and profile it.

    python bench/gpu_profile_ddpm.py                      # --device cuda, ≤ 4 min on one H200
    python bench/gpu_profile_ddpm.py --device cpu --batch 2 --steps 1 --warmup 1 --no-compile   # dry run

bench/gpu_check.py measured (H200, torch 2.11.0+cu130, batch 128): the DDPM CIFAR-10 UNet's
training step at 82.9 ms in fp32 (cuDNN's default TF32 convolutions) and 111.2 ms under bf16
autocast, while the WRNs ran 1.5–1.7× faster in bf16. This script times the same step
(bench/scale_cpu.py's ``Net``: the loss, backward and Adam step that ``trustdiff train`` runs) in
fp32 with and without TF32, in bf16 autocast, with channels_last in both, and compiled
(``torch.compile``, default mode) in both, and profiles one fp32 and one bf16 step with
torch.profiler: the ops that take the GPU's time, by self device time. → bench/results/gpu_profile_ddpm.json
Steps are timed by bench/gpu_check.py's ``time_step`` (warm-up, synchronize, timed steps); the
committed JSONs were measured with a copy of that loop this script then carried.

Measured 2026-12-04 on one H200 (torch 2.11.0+cu130): bench/results/gpu_profile_ddpm.json (batch 128)
and gpu_profile_ddpm_b512.json (``--batch 512 --steps 5 --warmup 2 --no-compile --top 8``). In that
run the compiled rows failed ("'UNet2DOutput' object has no attribute 'to'"): the script then wrapped
the network with ``torch.compile(module)``, whose wrapper class the loss's dispatch on the diffusers
UNet does not recognise; it now compiles in place with ``trustdiff.runtime.compile_network``, as
``--compile`` does, and its compiled rows were rerun in a later call on a fresh machine with
``--only-compiled``: bench/results/gpu_profile_ddpm_compiled.json (batch 128: fp32 59.4 ms, bf16 80.0 ms).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import flops_per_image, time_step  # noqa: E402  (the GPU check's step timer)
from scale_cpu import Net, batch as image_batch  # noqa: E402

from trustdiff.persist import atomic_write_json  # noqa: E402
from trustdiff.runtime import compile_network  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_step(net: Net, x, y, precision: str, top: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    net.step(x, y, precision)
    sync(x.device)
    with profile(activities=acts) as prof:
        net.step(x, y, precision)
        sync(x.device)
    key = "self_device_time_total" if x.device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in rows) or 1
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3,
             "share": getattr(e, key, 0) / total} for e in rows[:top]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--only-compiled", action="store_true", help="only the compiled rows (no eager rows, no profiles)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/gpu_profile_ddpm.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    x, y = (t.to(device) for t in image_batch(args.batch))
    per_image = flops_per_image(Net("ddpm-cifar"), torch.device("cpu"))[0]   # time_step's detail wants it
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "timings": {}, "profiles": {}}

    def run(name, precision, *, tf32=True, channels_last=False, compiled=False):
        torch.backends.cudnn.allow_tf32 = tf32
        net = Net("ddpm-cifar", device)
        xs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if channels_last:
            net.net.to(memory_format=torch.channels_last)
        if compiled:
            compile_network(net.net)               # in place, as --compile does: the loss dispatches on the class
        t = time.perf_counter()
        _, d = time_step(net, per_image, device, precision, args.batch, args.steps, args.warmup, inputs=(xs, y))
        r = {"ms_per_step": d["seconds_per_step"] * 1e3, "images_per_s": d["images_per_s"], "loss": d["loss"],
             "precision": precision, "cudnn_allow_tf32": tf32, "channels_last": channels_last, "compiled": compiled,
             "seconds_with_warmup": time.perf_counter() - t}
        out["timings"][name] = r
        print(f"{name:28s} {r['ms_per_step']:8.2f} ms/step  {r['images_per_s']:8.1f} img/s  loss {r['loss']:.4f}",
              flush=True)
        return net

    if not args.only_compiled:
        net = run("fp32 (TF32 conv)", "fp32")
        out["profiles"]["fp32"] = profile_step(net, x, y, "fp32", args.top)
        run("fp32 (no TF32)", "fp32", tf32=False)
        net = run("bf16 autocast", "bf16")
        out["profiles"]["bf16"] = profile_step(net, x, y, "bf16", args.top)
        run("bf16 channels_last", "bf16", channels_last=True)
        run("fp32 channels_last", "fp32", channels_last=True)
    if not args.no_compile:
        try:
            run("bf16 compiled", "bf16", compiled=True)
            run("fp32 compiled", "fp32", compiled=True)
        except Exception as e:               # a probe: say what failed and keep what was measured
            out["compile_error"] = f"{type(e).__name__}: {e}"[:500]
            print("compile failed:", out["compile_error"])
    torch.backends.cudnn.allow_tf32 = True
    for name, rows in out["profiles"].items():
        print(f"\n{name}: top {args.top} ops by self {'device' if device.type == 'cuda' else 'CPU'} time")
        for r in rows:
            print(f"  {r['self_ms']:8.2f} ms {100 * r['share']:5.1f}%  ×{r['calls']:<5d} {r['op'][:70]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, out)
    print(f"→ {args.json}")


if __name__ == "__main__":
    main()
