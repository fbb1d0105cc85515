"""GPU check: every trustdiff command at tiny size on one device, CPU-vs-device agreement on the same
seeds, and one training step of each paper-scale network in fp32 and bf16.

    python bench/gpu_check.py                   # --device cuda: ≤ 8 min on one H200 → bench/results/gpu_check.json
                                                #   (2026-12-04, one H200: 50 passed in 2.9 min)
    python bench/gpu_check.py --device cpu      # the dry run of the same script (≤ 5 min on 2 CPU cores)
                                                #   → bench/results/gpu_check_cpu.json

1. Commands. Every ``trustdiff`` command runs in-process (``trustdiff.cli.main``) with
   ``--device DEVICE`` at the test suite's tiny sizes, under a dispatch mode that adds up the FLOPs
   of every convolution and matmul (FlopCounterMode's formulas) by the device and dtype of its
   output: a command passes when it exits 0, its config.json records ``"device"`` and
   ``"precision"``, every ``train_run.device`` under its folder is the device, and at least 99% of
   its counted FLOPs ran there (a conv's output is where its weight and input are). ``demo``,
   ``certify-merge`` and ``report`` take no ``--device`` (demo runs on the default device, the GPU
   when there is one; the other two compute nothing on a device). ``train --precision bf16`` must
   run most of its FLOPs in bfloat16.
2. Agreement. The comparable commands run again with ``--device cpu`` on the same inputs and seeds.
   A torch.Generator on a GPU (Philox) draws other numbers than one on the CPU (mt19937) from the
   same seed, so randomized outputs agree in distribution only, and the tolerances say so:
   - deterministic outputs: watermark bits decoded from the same images (≥ 99% of bits equal;
     a bit flips only where a logit is within float error of 0) and the watermarked images
     (uint8, ≤ 1 level apart everywhere and ≥ 99% equal: TF32/fp32 rounding, then one rounding);
   - the sampler itself, in-process, from the same starting noise drawn on the CPU: Heun's
     output on both devices within 1e-2 in [0, 1] pixels (cuDNN's default TF32 convolutions carry
     ~1e-3 relative error per layer; measured values are printed);
   - rates from independent noise (certified accuracy and abstentions, accuracy under attack,
     generated images' mean pixel): |a − b| ≤ 3·√(2·p̄(1 − p̄)/n) + 1/n for rates over n images
     (3 standard errors of a difference of two independent proportions, plus one image), and
     |z| ≤ 4 for the mean pixel of the generated images.
   On ``--device cpu`` (the dry run) the device run is the CPU run: each output is compared with
   itself, which exercises the comparisons without running the commands twice.
3. Paper-scale steps. One training step (forward, loss, backward, optimizer step; the shared
   ``bench/scale_cpu.py`` definitions) of ddpm-cifar, WRN-28-10 and WRN-70-16 at 32×32, in fp32
   and bf16 (``torch.autocast``), and bf16 with the deterministic kernels ``trustdiff.train.fit``
   turns on: images/s and the fraction of the GPU's dense bf16 peak from the FLOPs per image
   counted with FlopCounterMode (read from bench/results/scale_cpu.json when its parameter counts
   match, else counted here). GPU: batch 128, 3 warm-up and 10 timed steps; CPU: batch 2, one step.

Each check runs in its own try/except; one table, then "N passed, M failed" (exit status 1 if any
failed). The demo runs last and is skipped (and said so) when less than 2.5 min of ``--max-minutes``
(7.5) is left.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_cpu import Net, batch as image_batch, count, cpu_model  # noqa: E402  (the shared paper-scale definitions)

from trustdiff.cli import main as cli_main  # noqa: E402
from trustdiff.persist import atomic_write_json  # noqa: E402

BF16_DENSE_TFLOPS = 989.0     # NVIDIA H200 datasheet: dense bf16 tensor cores
FP32_TFLOPS = 67.0            # NVIDIA H200 datasheet: fp32, no tensor cores
DEMO_MINUTES = 2.5            # demo --preset smoke: ≤ 2 min on 2 CPU cores (its preset's note), plus the audit
ON_DEVICE = 0.99              # share of a command's counted FLOPs that must run on the device
TRAIN = ["--data", "digits", "--resolution", "8", "--size", "tiny", "--steps", "2", "--batch", "8",
         "--checkpoint-every", "2", "--warmup", "1"]
CODEC = ["--resolution", "16", "--n-bits", "8", "--width", "4", "--enc-depth", "2", "--dec-depth", "2",
         "--codec-steps", "2", "--codec-batch", "8", "--l2-await", "0", "--l2-ramp", "2"]


class DeviceAudit(TorchDispatchMode):
    """FLOPs of every op FlopCounterMode has a formula for, by (device type, dtype) of its output."""

    def __init__(self):
        super().__init__()
        self.flops = defaultdict(float)
        self.ops = defaultdict(lambda: defaultdict(int))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            t = next((o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)), None)
            if t is not None:
                key = f"{t.device.type}:{str(t.dtype).removeprefix('torch.')}"
                self.flops[key] += formula(*args, **kwargs, out_val=out)
                self.ops[key][str(func._overloadpacket)] += 1
        return out

    def share(self, prefix: str) -> float:
        total = sum(self.flops.values())
        return sum(v for k, v in self.flops.items() if k.startswith(prefix)) / total if total else math.nan


class Checks:
    """Named checks, each in its own try/except: (name, ok, seconds, summary, detail)."""

    def __init__(self):
        self.rows = []

    def run(self, name, fn, *a, **kw):
        t = time.perf_counter()
        try:
            summary, detail = fn(*a, **kw)
            ok, err = True, None
        except Exception as e:           # one failure must not hide the others
            summary, detail, ok = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}", {}, False
            err = traceback.format_exc(limit=6)
        self.rows.append({"check": name, "ok": ok, "seconds": round(time.perf_counter() - t, 2), "summary": summary,
                          "detail": detail, "error": err})
        print(f"{'ok  ' if ok else 'FAIL'} {name:<34} {self.rows[-1]['seconds']:>7.1f} s  {summary}", flush=True)
        return ok


def _configs(folder: Path):
    for p in sorted(folder.rglob("config.json")):
        try:
            obj = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield p, obj


def run_command(argv, *, device, out: Path | None, precision="fp32", audit_device=True, expect_dtype=None):
    """One CLI command in-process; the device checks of section 1. Returns (summary, detail)."""
    argv = [str(a) for a in argv]
    audit = DeviceAudit()
    with audit:
        code = cli_main(argv)
    assert code == 0, f"exit status {code}"
    detail = {"argv": argv, "flops": dict(audit.flops), "ops": {k: dict(v) for k, v in audit.ops.items()}}
    notes = []
    if out is not None:
        cfg = json.loads((out / "config.json").read_text())
        detail["config_device"], detail["config_precision"] = cfg.get("device"), cfg.get("precision")
        assert str(cfg.get("device", "")).startswith(device.type), f"config.json device {cfg.get('device')!r}, expected {device}"
        assert cfg.get("precision") == precision, f"config.json precision {cfg.get('precision')!r}, expected {precision}"
        runs = {str(p.relative_to(out)): c["train_run"].get("device") for p, c in _configs(out) if isinstance(c.get("train_run"), dict)}
        detail["train_run_devices"] = runs
        wrong = {k: v for k, v in runs.items() if not str(v).startswith(device.type)}
        assert not wrong, f"train_run.device not {device.type}: {wrong}"
        notes.append(f"config {cfg.get('device')}/{cfg.get('precision')}")
        if runs:
            notes.append(f"train_run ×{len(runs)} {device.type}")
    total = sum(audit.flops.values())
    if audit_device and total:
        share = audit.share(device.type)
        detail["device_share"] = share
        off = {k: dict(v) for k, v in audit.ops.items() if not k.startswith(device.type)}
        assert share >= ON_DEVICE, f"{share:.1%} of {total:.2e} FLOP on {device.type}; elsewhere: {off}"
        notes.append(f"{share:.1%} of {total:.1e} FLOP on {device.type}")
    if expect_dtype:
        s = audit.share(f"{device.type}:{expect_dtype}")
        detail["dtype_share"] = s
        assert s >= 0.5, f"only {s:.0%} of the FLOPs in {expect_dtype}"
        notes.append(f"{s:.0%} in {expect_dtype}")
    return ", ".join(notes) or "exit 0", detail


# ---------------------------------------------------------------- comparisons (section 2)

def rate_tol(p1: float, p2: float, n: int) -> float:
    p = (p1 + p2) / 2
    return 3 * math.sqrt(2 * p * (1 - p) / n) + 1 / n


def _rates(obj, path=""):
    """Every binomial result {k, n, value} in a metrics JSON, by path."""
    if isinstance(obj, dict):
        if {"k", "n", "value"} <= obj.keys() and isinstance(obj["n"], int) and obj["n"] > 0:
            yield path, obj["value"], obj["n"]
        for k, v in obj.items():
            yield from _rates(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            name = v.get("name", i) if isinstance(v, dict) else i
            yield from _rates(v, f"{path}/{name}")


def compare_rates(a: Path, b: Path, extra=()):
    """The binomial rates of two metrics.json files within rate_tol; ``extra``: (key, n) pairs."""
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    ra, rb = {p: (v, n) for p, v, n in _rates(ma)}, {p: (v, n) for p, v, n in _rates(mb)}
    for key, n in extra:
        get = lambda m: m[key] if not isinstance(key, tuple) else m[key[0]][key[1]]  # noqa: E731
        ra[str(key)], rb[str(key)] = (get(ma), n), (get(mb), n)
    assert ra and ra.keys() == rb.keys(), f"different rates: {sorted(ra)} vs {sorted(rb)}"
    rows, worst = {}, 0.0
    for k in ra:
        (p1, n), (p2, _) = ra[k], rb[k]
        tol = rate_tol(p1, p2, n)
        rows[k] = {"cpu": p2, "device": p1, "n": n, "tol": tol}
        worst = max(worst, abs(p1 - p2) / tol)
    bad = {k: r for k, r in rows.items() if abs(r["cpu"] - r["device"]) > r["tol"]}
    assert not bad, f"outside 3 SE + 1/n: {bad}"
    return f"{len(rows)} rates, worst |Δ| = {worst:.2f}× tol", {"rates": rows}


def compare_certify(a: Path, b: Path):
    """Certified accuracy at radius 0 and the abstention rate, over the certified images."""
    n = json.loads((a / "metrics.json").read_text())["num_images"]
    return compare_rates(a, b, extra=[("abstain_rate", n), (("certified_accuracy", "0"), n)])


def compare_generated(a: Path, b: Path):
    xa, xb = (np.concatenate([np.load(p)["images"] for p in sorted(d.glob("images-*.npz"))]).astype(np.float64) / 255
              for d in (a, b))
    ma, mb = xa.reshape(len(xa), -1).mean(1), xb.reshape(len(xb), -1).mean(1)
    se = math.sqrt(ma.var(ddof=1) / len(ma) + mb.var(ddof=1) / len(mb)) or 1e-12
    z = (ma.mean() - mb.mean()) / se
    identical = bool(xa.shape == xb.shape and np.array_equal(xa, xb))
    assert abs(z) <= 4, f"mean pixel {ma.mean():.4f} (device) vs {mb.mean():.4f} (cpu): z = {z:.1f}"
    return (f"mean pixel {ma.mean():.4f} vs {mb.mean():.4f}, z = {z:+.2f}" + (" (identical)" if identical else "")), \
        {"mean_device": ma.mean(), "mean_cpu": mb.mean(), "z": z, "n": len(ma), "identical": identical}


def compare_embedded(a: Path, b: Path):
    ia, ib = (np.load(d / "watermarked.npz")["images"].astype(np.int16) for d in (a, b))
    diff = np.abs(ia - ib)
    same = float((diff == 0).mean())
    assert diff.max() <= 1 and same >= 0.99, f"max {diff.max()} levels, {same:.2%} equal"
    return f"max {diff.max()} level, {same:.2%} of pixels equal", {"max_levels": int(diff.max()), "equal": same}


def compare_bits(a: Path, b: Path):
    pa, pb = (np.load(d / "per_image.npz") for d in (a, b))
    agree = float((pa["bits"] == pb["bits"]).mean())
    det = int(pa["detected"].sum()), int(pb["detected"].sum())
    assert agree >= 0.99, f"{agree:.2%} of bits agree"
    assert abs(det[0] - det[1]) <= max(1, round(0.01 * len(pa["detected"]))), f"detected {det[0]} vs {det[1]}"
    return f"{agree:.2%} of {pa['bits'].size} bits agree, detected {det[0]} vs {det[1]}", \
        {"bit_agreement": agree, "detected_device": det[0], "detected_cpu": det[1]}


def compare_sampler(model: Path, device: torch.device, strict: bool):
    """Heun from the same CPU-drawn noise on the CPU and on ``device``: max |Δ| in [0, 1] pixels.
    Default float settings (cuDNN convolutions in TF32 on a GPU): within 1e-2; ``strict`` (TF32
    off): within 1e-4."""
    from trustdiff.diffusion import samplers
    from trustdiff.diffusion.model import load_model, sampling_sigmas
    from trustdiff.images import to_pixel

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if strict:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        outs = []
        for dev in (torch.device("cpu"), device):
            den, spec = load_model(model)
            den = den.to(dev)
            sig = sampling_sigmas("heun", 4, spec, dev)
            g = torch.Generator().manual_seed(0)
            x = (float(sig[0]) * torch.randn(32, spec.channels, spec.resolution, spec.resolution, generator=g)).to(dev)
            cond = None if spec.num_classes is None else (torch.arange(32) % spec.num_classes).to(dev)
            with torch.no_grad():
                outs.append(to_pixel(samplers.heun(den, x, sig, cond=cond)).cpu())
        flags = {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    d = float((outs[0] - outs[1]).abs().max())
    tol = 1e-4 if strict else 1e-2
    assert d <= tol, f"max |Δ| {d:.2e} > {tol:g}"
    return f"max |Δ| {d:.1e} (tol {tol:g})", {"max_abs_diff": d, "tol": tol, **flags}


# ---------------------------------------------------------------- paper-scale steps (section 3)

def flops_per_image(net: Net, device) -> tuple[float, str]:
    """A training step's FLOPs per image: from bench/results/scale_cpu.json when its parameter count
    is this network's, else counted here (FlopCounterMode, batch 2)."""
    path = Path(__file__).resolve().parent / "results" / "scale_cpu.json"
    try:
        row = json.loads(path.read_text())["nets"][net.name]
        if row["params"] == net.params:
            return row["step_flop_per_image"], "bench/results/scale_cpu.json"
    except (OSError, ValueError, KeyError):
        pass
    x, y = (t.to(device) for t in image_batch(2))
    return count(lambda: net.step(x, y))[0] / 2, "counted here"


def build_net(name: str, device, holder: dict):
    net = Net(name, device)
    holder["net"], (holder["flop"], source) = net, flops_per_image(net, device)
    return (f"{net.params / 1e6:.2f}M parameters on {next(net.net.parameters()).device}, "
            f"{holder['flop'] / 1e9:.1f} GFLOP per image-step ({source})"), {"params": net.params, "flop_source": source,
                                                                            "step_flop_per_image": holder["flop"]}


def time_step(net: Net, per_image: float, device, precision: str, batch: int, steps: int, warmup: int,
              deterministic=False, inputs=None):
    """One training step of ``net`` timed: (summary, detail). ``inputs``: the (x, y) batch to step on
    (default: ``batch`` images of bench/scale_cpu.py's, on ``device``)."""
    if precision == "bf16" and device.type == "cuda":
        assert torch.cuda.is_bf16_supported(), "no bf16 on this GPU"
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = not deterministic, deterministic
    try:
        assert all(p.device.type == device.type for p in net.net.parameters()), "parameters off the device"
        x, y = inputs if inputs is not None else (t.to(device) for t in image_batch(batch))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            net.step(x, y, precision)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            loss = net.step(x, y, precision)
        sync()
        s = (time.perf_counter() - t) / steps
        assert math.isfinite(loss), f"loss {loss}"
        ips = batch / s
        frac = ips * per_image / (BF16_DENSE_TFLOPS * 1e12)
        detail = {"batch": batch, "steps": steps, "warmup": warmup, "seconds_per_step": s, "images_per_s": ips,
                  "step_flop_per_image": per_image, "achieved_tflop_per_s": ips * per_image / 1e12,
                  "fraction_of_bf16_dense_peak": frac, "fraction_of_fp32_peak": ips * per_image / (FP32_TFLOPS * 1e12),
                  "deterministic": deterministic, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                  "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "loss": loss}
        if device.type == "cuda":
            detail["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        return (f"B={batch}: {s * 1e3:.4g} ms/step, {ips:.3g} img/s, {ips * per_image / 1e12:.3g} TFLOP/s = "
                f"{frac:.2g} of {BF16_DENSE_TFLOPS:g} bf16 dense"), detail
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]


# ---------------------------------------------------------------- the plan

def command_plan(w: Path, n_cmp: int):
    """(name, argv without --out/--device, run folder name) of every run command, tiny."""
    d = lambda *p: w.joinpath(*p)  # noqa: E731
    return [
        ("train", ["train", *TRAIN], "m"),
        ("train --precision bf16", ["train", *TRAIN, "--precision", "bf16"], "m-bf16"),
        ("generate", ["generate", "--model", d("m"), "-n", n_cmp, "--sample-steps", "2"], "g"),
        ("train-classifier", ["train-classifier", "--resolution", "8", "--steps", "2", "--width", "4"], "clf"),
        ("certify", ["certify", "--classifier", d("clf"), "--sigma", "0.25", "--draws0", "10", "--draws", "100",
                     "--batch", "50", "--max", n_cmp], "cert"),
        ("certify --denoiser", ["certify", "--classifier", d("clf"), "--denoiser", d("m"), "--sigma", "0.25",
                                "--draws0", "5", "--draws", "20", "--batch", "25", "--max", "4", "--sample-steps", "2"], "certd"),
        ("certify --shard 0/2", ["certify", "--classifier", d("clf"), "--sigma", "0.25", "--draws0", "5", "--draws", "20",
                                 "--max", "4", "--shard", "0/2"], "certs"),
        ("certify --shard 1/2", ["certify", "--classifier", d("clf"), "--sigma", "0.25", "--draws0", "5", "--draws", "20",
                                 "--max", "4", "--shard", "1/2"], "certs"),
        ("purify eval", ["purify", "eval", "--classifier", d("clf"), "--denoiser", d("m"), "--t-star", "0.1",
                         "--sample-steps", "2", "--attack", "pgd-eot", "--attack-steps", "1", "--eot", "2",
                         "--eot-batch", "2", "--checkpoint", "-n", n_cmp, "--n-check", "2", "--votes", "2",
                         "--n-evals", "3"], "pur"),   # stacked EOT, _Recompute, votes, worst of N, fixed randomness
        ("watermark train-codec", ["watermark", "train-codec", *CODEC], "codec"),
        ("watermark embed", ["watermark", "embed", "--codec", d("codec"), "--split", "test", "--key-seed", "7"], "emb"),
        ("watermark detect", ["watermark", "detect", "--codec", d("codec"), "--images", d("emb", "watermarked.npz"),
                              "--key-file", d("emb", "key.txt"), "--fpr", "0.01"], "det"),
        ("watermark recipe", ["watermark", "recipe", *CODEC, "--size", "tiny", "--steps", "3", "--batch", "16", "-n", "8",
                              "--sample-steps", "2", "--fpr", "0.01", "--no-fd", "--key", "0xa5"], "recipe"),
        ("t2i train", ["t2i", "train", "--size", "tiny", "--resolution", "8", "--steps", "2", "--batch", "4",
                       "--warmup", "0", "--checkpoint-every", "2"], "t2i"),
        ("t2i generate", ["t2i", "generate", "--pipeline", d("t2i"), "--prompt", "seven", "-n", "2",
                          "--sample-steps", "2"], "t2ig"),
        ("watermark t2i embed", ["watermark", "t2i", "embed", "--pipeline", d("t2i"), "--target", "code", "--steps", "2",
                                 "--batch", "2", "--preserve", "0"], "wm"),
        ("watermark t2i verify", ["watermark", "t2i", "verify", "--pipeline", d("wm"), "--original", d("t2i"),
                                  "--target", "code", "--n-trigger", "2", "--per-prompt", "1", "--prompt",
                                  "a handwritten one", "--sample-steps", "2"], "ver"),
        ("watermark t2i dreambooth", ["watermark", "t2i", "dreambooth", "--pipeline", d("wm"), "--instance",
                                      d("subject.npz"), "--steps", "2", "--batch", "2"], "db"),
        ("advtrain generate", ["advtrain", "generate", "--model", d("m"), "-n", "40", "--sample-steps", "2"], "gen"),
        ("advtrain train", ["advtrain", "train", "--resolution", "8", "--generated", d("gen"), "--arch", "small-cnn",
                            "--width", "8", "--epochs", "1", "--batch", "16", "--holdout", "16", "--attack-steps", "1",
                            "--iters-per-epoch", "2", "--eps", "0.1", "--warmup-epochs", "0", "--augment", "idbh"],
         "at"),                                                       # augmentations drawn from the device's generator
        ("advtrain eval", ["advtrain", "eval", "--run", d("at"), "-n", n_cmp, "--no-autoattack", "--n-check", "2"], "ev"),
    ]


#: command → the comparison of its device and CPU outputs (section 2)
COMPARE = {
    "generate": compare_generated,
    "certify": compare_certify,
    "purify eval": compare_rates,
    "advtrain eval": compare_rates,
    "watermark embed": compare_embedded,
    "watermark detect": compare_bits,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--demo", choices=["run", "dry-run", "skip"], default=None,
                    help="demo --preset smoke: run it (default on a GPU) or only --dry-run (default on the CPU)")
    ap.add_argument("--batch", type=int, default=None, help="paper-scale step batch (GPU: 128, CPU: 2)")
    ap.add_argument("--parts", default="commands,compare,steps")
    ap.add_argument("--max-minutes", type=float, default=7.5,
                    help="the demo (last) is skipped, not failed, when less than its time is left of this")
    args = ap.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # deterministic cuBLAS, as trustdiff.train.fit sets
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU")
    json_path = args.json or Path("bench/results") / ("gpu_check.json" if cuda else f"gpu_check_{device.type}.json")
    demo = args.demo or ("run" if cuda else "dry-run")
    parts = set(args.parts.split(","))
    n_cmp = 64 if cuda else 8
    t0, load0 = time.perf_counter(), os.getloadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "subject.npz", images=np.random.RandomState(0).randint(0, 256, (2, 8, 8, 1)).astype(np.uint8),
             labels=np.zeros(2, np.int64))
    checks, skipped = Checks(), []
    dev = str(device)
    print(f"device {dev}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else " (dry run)") + f", work {work}")

    plan = command_plan(work, n_cmp)
    if "commands" in parts:
        for name, argv, out in plan:
            precision = "bf16" if "--precision" in argv else "fp32"
            extra = [] if "--precision" in argv else ["--precision", "fp32"]
            checks.run(name, run_command, [*argv, "--out", work / out, "--device", dev, *extra], device=device,
                       out=work / out, precision=precision, expect_dtype="bfloat16" if precision == "bf16" else None)
        checks.run("certify-merge", run_command, ["certify-merge", work / "certs"], device=device, out=None)
        checks.run("report", run_command, ["report", work, "--out", work / "report.html"], device=device, out=None,
                   audit_device=False)

    if "compare" in parts:
        for name, argv, out in plan:
            if name not in COMPARE:
                continue
            if cuda:
                twin = work / f"{out}-cpu"
                ok = checks.run(f"{name} --device cpu", run_command, [*argv, "--out", twin, "--device", "cpu"],
                                device=torch.device("cpu"), out=twin)
            else:                    # the dry run: the device is the CPU, its run is the CPU run
                twin, ok = work / out, True
            if ok and (work / out / "config.json").is_file():
                checks.run(f"  agree: {name}", COMPARE[name], work / out, twin)
        checks.run("  agree: heun, same noise", compare_sampler, work / "m" / "model", device, False)
        if cuda:
            checks.run("  agree: heun, same noise, no TF32", compare_sampler, work / "m" / "model", device, True)

    if "steps" in parts:
        bsz = args.batch or (128 if cuda else 2)
        steps, warmup = (10, 3) if cuda else (1, 0)
        modes = [("fp32", False), ("bf16", False)] + ([("bf16", True)] if cuda else [])
        for name in ("ddpm-cifar", "wrn-28-10", "wrn-70-16"):
            holder = {}
            if checks.run(f"build {name}", build_net, name, device, holder):
                for precision, det in modes:
                    checks.run(f"step {name} {precision}{' determ.' if det else ''}", time_step, holder["net"],
                               holder["flop"], device, precision, bsz, steps, warmup, det)
            holder.clear()
            if cuda:
                torch.cuda.empty_cache()

    if "commands" in parts and demo != "skip":      # last: the longest command, and the one a budget may skip
        left = args.max_minutes * 60 - (time.perf_counter() - t0)
        if demo == "run" and left < DEMO_MINUTES * 60:
            print(f"skip demo --preset smoke: {left / 60:.1f} of --max-minutes {args.max_minutes:g} left "
                  f"(it needs about {DEMO_MINUTES:g})")
            skipped.append("demo")
        else:
            argv = ["demo", "--preset", "smoke", "--out", work / "demo"] + (["--dry-run"] if demo == "dry-run" else [])
            checks.run(f"demo --preset smoke{' --dry-run' if demo == 'dry-run' else ''}", run_demo, argv, device,
                       work / "demo", demo == "run")

    passed = sum(r["ok"] for r in checks.rows)
    failed = len(checks.rows) - passed
    seconds = time.perf_counter() - t0
    print(f"\n{'check':<36} {'':4} {'s':>7}  result")
    for r in checks.rows:
        print(f"{r['check']:<36} {'ok' if r['ok'] else 'FAIL':4} {r['seconds']:>7.1f}  {r['summary']}")
    print(f"\n{passed} passed, {failed} failed" + (f", skipped: {', '.join(skipped)}" if skipped else "")
          + f" in {seconds / 60:.1f} min on {dev}"
          f" (load average {load0[0]:.2f} → {os.getloadavg()[0]:.2f})")
    atomic_write_json(json_path, {
        "device": dev, "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "dry_run": not cuda, "torch": torch.__version__, "cuda": torch.version.cuda,
        "assumed_peak": {"bf16_dense_tflops": BF16_DENSE_TFLOPS, "fp32_tflops": FP32_TFLOPS, "source": "NVIDIA H200 datasheet"},
        "load_average_before": load0, "load_average_after": os.getloadavg(), "seconds": seconds,
        "passed": passed, "failed": failed, "skipped": skipped, "checks": checks.rows,
    })
    print(f"→ {json_path}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


def run_demo(argv, device, out: Path, full: bool):
    """demo takes no --device: it runs on the default device (this process's GPU when there is
    one); with a full run, every stage's config.json and train_run must name that device."""
    summary, detail = run_command(argv, device=device, out=None, audit_device=full)
    if full:
        devs = {str(p.relative_to(out)): (c.get("device"), (c.get("train_run") or {}).get("device"))
                for p, c in _configs(out) if "device" in c or "train_run" in c}
        detail["stage_devices"] = devs
        wrong = {k: v for k, v in devs.items() if not all(x is None or str(x).startswith(device.type) for x in v)}
        assert devs and not wrong, f"stages not on {device.type}: {wrong}"
        summary += f", {len(devs)} stage configs on {device.type}"
    return summary, detail


if __name__ == "__main__":
    main()
