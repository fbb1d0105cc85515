"""Bench: the four hot loops against the plain eager path, the reference and the machine's peak (issue 22).

In one run, on the bench's networks (the 1.6M-parameter class-conditional "small" UNet at 16×16
and the width-32 SmallCNN of the certification bench; seeded random weights unless --denoiser /
--classifier give trained ones — the speed of a dense network does not depend on its weights):

* certification: noise samples/s of CERTIFY (n0 = 100, n = 2,000, σ = 0.25) through denoiser +
  classifier — today's loop at the certification bench's batch 1,000; the reference
  (locuslab/smoothing ``code/core.py``, a local checkout, --reference) at each batch size and its
  best; trustdiff's loop at each batch size, eager and compiled. Certificates compared image by
  image (the reference too: it draws from the global RNG, seeded here as trustdiff seeds each
  image's generator, so at the same batch size it sees the same noise).
* generation: samples/s of Heun 18 steps (NFE 35), eager and compiled; samples compared.
* PGD-EOT through ``PurifiedClassifier`` (the reverse SDE at t* = 0.1, 5 and 20 solver steps,
  EOT 8): seconds per image and PGD step, EOT one pass at a time (today) and stacked
  (``eot_batch``), and the gradient of both on a deterministic model compared.
* memory: the peak RSS added by one full-gradient attack step through 1, 5, 20 and 100 solver
  steps, with and without checkpointing (each in a fresh process).
* training: the diffusion training step's GFLOP/s and the first steps' losses, eager and compiled.
* bf16 (``--precision bf16``: autocast matmuls and convolutions) and bf16 + ``--compile`` for every
  loop, with what the rounding changes: the certificates of --agree-images digits test images
  (fp32 and bf16, eager and compiled, through the given networks), the samples' difference from
  fp32 eager, the losses' from today's, the cosine of the purifier's input gradient to fp32's
  (same seed). bf16 rows are also given as a fraction of the bf16 matmul peak measured likewise.

Every figure is printed as achieved GFLOP/s (FLOPs of matmuls and convolutions, counted with
torch's FlopCounterMode), as a fraction of the fp32 matmul peak measured in the same run (the best
of a measurement at the start and one at the end), and as a ratio to today's eager path. Today's
paths run first, under glibc's default allocator; then :func:`trustdiff.runtime.tune_cpu_allocator`
(what every trustdiff command does) and the new paths. Timings are the best of --repeats runs.

    PYTHONPATH=/path/to/statsmodels python bench/throughput.py --reference ../smoothing [--quick]

The reference needs statsmodels (not a trustdiff dependency): put it on PYTHONPATH. Writes
bench/results/throughput.json (and a Markdown table beside it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import best_seconds, matmul_peak_gflops  # noqa: E402  (one timer and peak for every bench)

from trustdiff.attacks.pgd import attack_loss, input_gradient, pgd  # noqa: E402
from trustdiff.certify import DenoisedClassifier, Smooth, certify_set  # noqa: E402
from trustdiff.diffusion.model import ModelSpec, build_denoiser, load_model, sample  # noqa: E402
from trustdiff.diffusion import samplers  # noqa: E402
from trustdiff.diffusion.precond import compile_backbone  # noqa: E402
from trustdiff.nets.classifier import SmallCNN  # noqa: E402
from trustdiff.persist import atomic_write_bytes, atomic_write_json  # noqa: E402
from trustdiff.purify import PurifiedClassifier  # noqa: E402
from trustdiff.runtime import autocast, compile_network, tune_cpu_allocator, with_precision  # noqa: E402
from trustdiff.train.classifier import load_classifier  # noqa: E402

SIGMA, N0, N, ALPHA = 0.25, 100, 2000, 0.001
T_STAR, EOT = 0.1, 8


# --- the networks -------------------------------------------------------------------------------

def networks(args):
    """(denoiser, spec, classifier), frozen, in eval mode."""
    torch.manual_seed(0)
    if args.denoiser:
        den, spec = load_model(args.denoiser)
    else:
        spec = ModelSpec(size="small", num_classes=10)
        unet, den = build_denoiser(spec)
        unet.eval().requires_grad_(False)
    clf = load_classifier(args.classifier) if args.classifier else SmallCNN(width=32)
    return den.eval(), spec, clf.eval().requires_grad_(False)


def flop_count(fn) -> float:
    """FLOPs of one call of fn() (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def figures(gflop_per_unit: float, units_per_s: float, peak: float, ref_units_per_s: float | None) -> dict:
    achieved = gflop_per_unit * units_per_s
    out = {"per_s": units_per_s, "gflops": achieved, "fraction_of_peak": achieved / peak}
    if ref_units_per_s:
        out["vs_today"] = units_per_s / ref_units_per_s
    return out


def show(name: str, f: dict, unit: str = "samples/s") -> None:
    ratio = f" = {f['vs_today']:.2f}× today" if "vs_today" in f else ""
    print(f"  {name:<44} {f['per_s']:9.1f} {unit}  {f['gflops']:6.1f} GFLOP/s  {100 * f['fraction_of_peak']:5.1f}% of peak{ratio}",
          flush=True)


# --- certification ------------------------------------------------------------------------------

class TodaySmooth(Smooth):
    """Smooth with the counting loop as it was before issue 22 (no_grad, a fresh expanded batch
    and noise tensor per batch): the baseline."""

    def _sample_noise(self, x, num, batch_size, generator=None):
        K = self.num_classes
        counts = torch.zeros(K, dtype=torch.long, device=x.device)
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                b = min(batch_size, remaining)
                batch = x.unsqueeze(0).expand(b, *x.shape)
                noise = torch.randn(batch.shape, generator=generator, device=x.device, dtype=x.dtype)
                counts += torch.bincount(self.base_classifier(batch + self.sigma * noise).argmax(dim=1), minlength=K)
                remaining -= b
        return counts.cpu()


def certificates(smooth, x, y, idx, batch: int, repeats: int):
    """(rows of the last repeat, the best seconds per image)."""
    rows, best = None, float("inf")
    for _ in range(repeats):
        rows = certify_set(smooth, x, y, idx, n0=N0, n=N, alpha=ALPHA, batch_size=batch, seed=0)
        best = min(best, sum(r.time for r in rows) / len(rows))
    return [(r.predict, round(r.radius, 12)) for r in rows], best


def reference_certificates(core, f, x, idx, batch: int, repeats: int):
    """locuslab/smoothing's Smooth.certify on the same images, the global RNG seeded per image as
    certify_set seeds its generator (seed + idx)."""
    ref = core.Smooth(f, 10, SIGMA)
    rows, best = None, float("inf")
    for _ in range(repeats):
        out, t = [], 0.0
        for i in idx:
            torch.manual_seed(int(i))
            t0 = time.perf_counter()
            c, r = ref.certify(x[i], N0, N, ALPHA, batch)
            t += time.perf_counter() - t0
            out.append((int(c), round(float(r), 12)))
        rows, best = out, min(best, t / len(idx))
    return rows, best


def load_reference(path: Path):
    """Import the reference's ``code/core.py``. Two shims, neither touching what is timed: its
    ``torch.randn_like(batch, device='cuda')`` is pointed at the batch's own device (it was written
    for a GPU), and ``scipy.stats.binom_test`` (removed in SciPy 1.12; only its PREDICT uses it)
    is provided by ``binomtest``."""
    import scipy.stats

    if not hasattr(scipy.stats, "binom_test"):
        scipy.stats.binom_test = lambda k, n, p=0.5: scipy.stats.binomtest(int(k), int(n), p).pvalue
    sys.path.insert(0, str(path / "code"))
    import core  # noqa: E402

    randn_like = torch.randn_like

    class _Torch:                                    # the module as core.py sees it
        def __getattr__(self, name):
            if name == "randn_like":
                return lambda t, device=None, **kw: randn_like(t, **kw)
            return getattr(torch, name)

    core.torch = _Torch()
    return core


# --- generation ---------------------------------------------------------------------------------

def today_sample(den, spec, seeds):
    """sample() as before issue 22: under no_grad (now inference_mode), Heun 18."""
    with torch.no_grad():
        return sample(den, spec, seeds, steps=18, labels=torch.arange(len(seeds)) % 10)


def new_sample(den, spec, seeds, precision="fp32"):
    with torch.inference_mode():
        return sample(den, spec, seeds, steps=18, labels=torch.arange(len(seeds)) % 10, precision=precision)


def sample_flops(den, spec) -> float:
    """FLOPs of one Heun-18 sample: NFE × one denoiser call per image."""
    x = torch.randn(8, spec.channels, spec.resolution, spec.resolution)
    with torch.no_grad():
        per_call = flop_count(lambda: den(x, 1.0, torch.zeros(8, dtype=torch.long))) / 8
    return per_call * samplers.nfe("heun", 18)


# --- PGD-EOT ------------------------------------------------------------------------------------

def purifier(clf, den, steps, checkpoint=False):
    return PurifiedClassifier(clf, den, T_STAR, solver="sde", steps=steps, checkpoint=checkpoint)


def attack_seconds(model, x, y, pgd_steps, eot_batch, repeats, warmup: int = 0) -> float:
    """Best seconds per image and PGD step of PGD-``pgd_steps`` EOT-8 (L∞ ε = 0.1), after
    ``warmup`` untimed attacks (1 for compiled networks: the first call compiles)."""
    torch.manual_seed(0)
    return best_seconds(lambda: pgd(model, x, y, eps=0.1, alpha=0.01, steps=pgd_steps, eot=EOT, eot_batch=eot_batch),
                     repeats, warmup=warmup) / (len(x) * pgd_steps)


def attack_step_flops(model, x, y) -> float:
    """FLOPs of one PGD step: EOT × one forward/backward of the batch, per image."""
    def one_pass():                  # input_gradient's pass (.backward: FlopCounterMode cannot watch autograd.grad)
        xi = x.clone().requires_grad_(True)
        attack_loss(model(xi), y, "ce").sum().backward()

    return EOT * flop_count(one_pass) / len(x)


def memory_probe(steps: int, checkpoint: bool, n: int) -> None:
    """(In a fresh process, glibc's default allocator, nothing run before.) Print the peak RSS
    that one full-gradient step of PGD-EOT-1 through the ``steps``-step purifier adds to the
    process's resident memory, in MiB (the kernel's high-water mark, reset just before)."""
    args = argparse.Namespace(denoiser=os.environ.get("TP_DENOISER") or None,
                              classifier=os.environ.get("TP_CLASSIFIER") or None)
    den, spec, clf = networks(args)
    x, y = torch.rand(n, 1, 16, 16), torch.arange(n) % 10
    model = purifier(clf, den, steps, checkpoint)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:      # resets the peak (VmHWM) to the current RSS
        f.write("5")
    input_gradient(model, x, y, eot=1)
    peak = _status_kib("VmHWM")
    print(json.dumps({"added_mib": max(peak - before, 0) / 1024, "before_mib": before / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_memory(n: int, args) -> dict:
    env = {**os.environ, "TP_DENOISER": str(args.denoiser or ""), "TP_CLASSIFIER": str(args.classifier or "")}
    out = {}
    for ckpt in (False, True):
        for steps in (1, 5, 20, 100):
            proc = subprocess.run([sys.executable, __file__, "--memory-probe", str(steps), str(int(ckpt)), str(n)],
                                  capture_output=True, text=True, check=True, env=env)
            key = f"{'checkpoint' if ckpt else 'stored'}-{steps}"
            out[key] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  {'with' if ckpt else 'without'} checkpointing, {steps:3d} solver steps: "
                  f"+{out[key]['added_mib']:8.1f} MiB", flush=True)
    return out


# --- training -----------------------------------------------------------------------------------

def train_steps(unet, spec, steps: int, batch: int, precision: str = "fp32"):
    """Losses of ``steps`` Adam steps of the EDM loss on a fixed stream of random batches, and
    the best seconds per step after the first two (compilation, allocator warm-up)."""
    from trustdiff.train.diffusion import diffusion_loss_fn

    torch.manual_seed(1)
    loss_fn = diffusion_loss_fn(spec, 0.1)
    opt = torch.optim.Adam([p for p in unet.parameters() if p.requires_grad], lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(0)
    data = torch.Generator().manual_seed(2)
    losses, times = [], []
    for _ in range(steps):
        x = torch.rand(batch, 1, 16, 16, generator=data)
        y = torch.randint(0, 10, (batch,), generator=data)
        t = time.perf_counter()
        with autocast("cpu", precision):                  # as trustdiff.train.fit runs the loss
            loss = loss_fn(unet, x, y, g).float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - t)
    return losses, min(times[2:])


def fresh_unet(spec):
    torch.manual_seed(0)
    unet, _ = build_denoiser(spec)
    return unet.train()


def train_flops(spec, batch: int) -> float:
    from trustdiff.train.diffusion import diffusion_loss_fn

    unet = fresh_unet(spec)
    x, y = torch.rand(batch, 1, 16, 16), torch.randint(0, 10, (batch,))
    loss_fn = diffusion_loss_fn(spec, 0.1)
    return flop_count(lambda: loss_fn(unet, x, y, torch.Generator().manual_seed(0)).mean().backward())


# --- the run: each measurement in a fresh process ---------------------------------------------

#: (loop, phase, options): phase "today" runs the code as it was under glibc's default allocator;
#: "new" calls tune_cpu_allocator first (as every trustdiff command does) and runs today's code
JOBS = [
    ("certify", "today", {"batches": [250, 1000]}),
    ("certify", "new", {"batches": [100, 250, 1000]}),
    ("certify", "new", {"batches": [250], "compiled": True}),
    ("certify", "new", {"batches": [250], "precision": "bf16"}),
    ("certify", "new", {"batches": [100, 250, 500], "precision": "bf16", "compiled": True}),
    ("reference", "today", {"batches": [100, 250, 500, 1000]}),
    ("reference", "new", {"batches": [250]}),
    ("generate", "today", {}),
    ("generate", "new", {}),
    ("generate", "new", {"compiled": True}),
    ("generate", "new", {"precision": "bf16"}),
    ("generate", "new", {"precision": "bf16", "compiled": True}),
    ("pgd", "today", {"eot_batches": [1]}),
    ("pgd", "new", {"eot_batches": [1, 4, 8]}),
    ("pgd", "new", {"eot_batches": [8], "compiled": True}),
    ("pgd", "new", {"eot_batches": [8], "precision": "bf16"}),
    ("pgd", "new", {"eot_batches": [8], "precision": "bf16", "compiled": True}),
    ("train", "today", {}),
    ("train", "new", {}),
    ("train", "new", {"compiled": True}),
    ("train", "new", {"precision": "bf16"}),
    ("train", "new", {"precision": "bf16", "compiled": True}),
]


def job_name(loop, phase, opts) -> str:
    return (f"{loop}-{phase}" + ("-bf16" if opts.get("precision", "fp32") == "bf16" else "")
            + ("-compiled" if opts.get("compiled") else ""))


def worker(job: dict, args, out: Path) -> None:
    """One measurement (in its own process, so an allocator setting, compiled graphs or a heap
    grown by an earlier loop cannot change it); its results go to ``out`` (torch.save)."""
    loop, phase, opts = job["loop"], job["phase"], job["opts"]
    if phase == "new":
        tune_cpu_allocator()
    den, spec, clf = networks(args)
    prec, compiled = opts.get("precision", "fp32"), bool(opts.get("compiled"))
    r: dict = {"peak": matmul_peak_gflops(), "peak_bf16": matmul_peak_gflops(dtype=torch.bfloat16)}
    test = torch.rand(max(args.cert_images, args.attack_images), 1, 16, 16, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(len(test)) % 10
    idx = list(range(args.cert_images))
    per_image = N0 + N
    if loop in ("certify", "reference"):
        f = DenoisedClassifier(den, clf, SIGMA)
        core = load_reference(args.reference) if loop == "reference" else None
        if compiled:
            compile_network(f)                                   # what certify --compile does
        f = with_precision(f, prec)                              # what --precision bf16 does
        for b in opts["batches"]:
            if core is not None:
                rows, s_img = reference_certificates(core, f, test, idx, b, args.repeats)
            else:
                smooth = (TodaySmooth if phase == "today" else Smooth)(f, 10, SIGMA)
                if compiled:
                    t = time.perf_counter()
                    certificates(smooth, test, labels, idx[:1], b, 1)          # compiles the n0 and the n shapes
                    r[f"compile_seconds-{b}"] = time.perf_counter() - t
                rows, s_img = certificates(smooth, test, labels, idx, b, args.repeats)
            r[str(b)] = {"per_s": per_image / s_img, "rows": rows}
    elif loop == "generate":
        seeds = list(range(args.gen_images))
        if compiled:
            compile_backbone(den)                                # what generate --compile does
        draw = today_sample if phase == "today" else lambda d, s, z: new_sample(d, s, z, prec)
        t = time.perf_counter()
        r["samples"] = draw(den, spec, seeds)
        r["first_run_seconds"] = time.perf_counter() - t
        r["per_s"] = len(seeds) / best_seconds(lambda: draw(den, spec, seeds), args.repeats)
    elif loop == "pgd":
        x, y = test[: args.attack_images], labels[: args.attack_images]
        if compiled:                                             # what purify eval --compile does
            compile_network(clf)
            compile_backbone(den)
        clf_p, den_p = with_precision(clf, prec), with_precision(den, prec)
        for steps in (5, 20):
            for k in opts["eot_batches"]:
                r[f"{steps}-{k}"] = 1 / attack_seconds(purifier(clf_p, den_p, steps), x, y, args.attack_steps, k, args.repeats,
                                                       warmup=int(compiled))
        torch.manual_seed(0)                                     # the same SDE noise in every job: gradients comparable
        r["purifier_gradient"], _ = input_gradient(purifier(clf_p, den_p, 5), x, y, eot=EOT, eot_batch=EOT)
        g1, _ = input_gradient(clf, x, y, eot=EOT, eot_batch=1)
        g8, _ = input_gradient(clf, x, y, eot=EOT, eot_batch=EOT)
        r["gradient_max_abs_diff"], r["gradient_max_abs"] = float((g1 - g8).abs().max()), float(g1.abs().max())
    elif loop == "train":
        unet = fresh_unet(spec)
        if compiled:
            unet.compile()                            # in place: still a UNet2DModel to the loss
        t = time.perf_counter()
        r["losses"], s_step = train_steps(unet, spec, args.train_steps, args.train_batch, prec)
        r["first_run_seconds"] = time.perf_counter() - t
        r["per_s"] = 1 / s_step
    elif loop == "agree":
        r.update(agreement(den, clf, args.agree_images))
    r["peak_after"] = matmul_peak_gflops()
    r["peak_bf16_after"] = matmul_peak_gflops(dtype=torch.bfloat16)
    torch.save(r, out)


def agreement(den, clf, n_images: int) -> dict:
    """Certificates (class, radius) of the first ``n_images`` digits test images at batch 250, in
    fp32 and bf16, eager and compiled: what rounding changes where the weights are trained (the
    timed jobs certify uniform noise, where a randomly initialised classifier seldom wavers)."""
    from trustdiff.data import load

    xs, ys = load("digits", resolution=16, split="test", seed=0).tensors()
    xs, ys = xs[:n_images], ys[:n_images]
    idx, f = list(range(len(xs))), DenoisedClassifier(den, clf, SIGMA)
    out = {"labels": ys.tolist()}
    for name in ("fp32", "bf16", "fp32-compiled", "bf16-compiled"):
        if name == "fp32-compiled":
            compile_network(f)
        smooth = Smooth(with_precision(f, name.split("-")[0]), 10, SIGMA)
        out[name] = certificates(smooth, xs, ys, idx, 250, 1)[0]
    return out


def run_job(loop, phase, opts, args, tmp: Path) -> dict:
    out = tmp / f"{job_name(loop, phase, opts)}.pt"
    job = json.dumps({"loop": loop, "phase": phase, "opts": opts})
    passed = []
    for k, v in vars(args).items():
        if k not in ("memory_probe", "worker", "worker_out", "quick", "out") and v is not None:
            passed += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, **({"TRUSTDIFF_CPU_ALLOCATOR": "system"} if phase == "today" else {})}
    t = time.time()
    subprocess.run([sys.executable, __file__, *passed, "--worker", job, "--worker-out", str(out)], check=True, env=env)
    r = torch.load(out, weights_only=True)
    r["wall_seconds"] = time.time() - t
    return r


def best_of(a: dict | None, b: dict) -> dict:
    """Keep the faster figure of two runs of a job (rows, samples and losses are the same in both)."""
    if a is None:
        return b
    out = dict(b)
    for k, v in b.items():
        if isinstance(v, dict) and "per_s" in v:
            out[k] = v if v["per_s"] >= a[k]["per_s"] else a[k]
        elif k == "per_s" or k[:1].isdigit():
            out[k] = max(v, a[k])
    for k in ("peak", "peak_after", "peak_bf16", "peak_bf16_after"):
        out[k] = max(a[k], b[k])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoiser", type=Path, default=None, help="a trained model folder (default: seeded random weights)")
    ap.add_argument("--classifier", type=Path, default=None, help="a trained classifier (default: seeded random weights)")
    ap.add_argument("--reference", type=Path, default=None, help="a checkout of locuslab/smoothing (required)")
    ap.add_argument("--cert-images", type=int, default=3)
    ap.add_argument("--agree-images", type=int, default=24,
                    help="digits test images certified in fp32 and bf16, eager and compiled, to count what differs")
    ap.add_argument("--gen-images", type=int, default=256)
    ap.add_argument("--attack-images", type=int, default=16)
    ap.add_argument("--attack-steps", type=int, default=1, help="PGD steps timed (the cost per step is what is reported)")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats inside each process (the best counts)")
    ap.add_argument("--rounds", type=int, default=2, help="every job runs this many times, in alternating order")
    ap.add_argument("--quick", action="store_true", help="a smoke run of the script (tiny sizes; figures meaningless)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    ap.add_argument("--n", type=int, default=2000, help=argparse.SUPPRESS)
    ap.add_argument("--memory-probe", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global N
    N = args.n
    if args.memory_probe:
        return memory_probe(args.memory_probe[0], bool(args.memory_probe[1]), args.memory_probe[2])
    if args.worker:
        return worker(json.loads(args.worker), args, args.worker_out)
    if args.reference is None or not (args.reference / "code" / "core.py").is_file():
        ap.error(f"--reference: expected a checkout of locuslab/smoothing (with code/core.py), got {args.reference}")
    if args.quick:
        args.cert_images, args.gen_images, args.attack_images, args.train_steps, args.agree_images = 1, 16, 2, 4, 2
        args.repeats, args.rounds, args.n = 1, 1, 300
        N = 300
    t_run = time.time()
    den, spec, clf = networks(args)
    with torch.no_grad():
        cert_flop = flop_count(lambda: DenoisedClassifier(den, clf, SIGMA)(torch.rand(8, 1, 16, 16))) / 8
    x_att = torch.rand(args.attack_images, 1, 16, 16)
    y_att = torch.arange(args.attack_images) % 10
    flops = {"certify": cert_flop, "generate": sample_flops(den, spec), "train": train_flops(spec, args.train_batch),
             "pgd-5": attack_step_flops(purifier(clf, den, 5), x_att, y_att),
             "pgd-20": attack_step_flops(purifier(clf, den, 20), x_att, y_att)}
    res: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                 "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                              if k not in ("memory_probe", "worker", "worker_out")},
                 "certify": {"sigma": SIGMA, "n0": N0, "n": N, "alpha": ALPHA},
                 "gflop": {k: v / 1e9 for k, v in flops.items()}}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            order = JOBS if rnd % 2 == 0 else JOBS[::-1]
            for loop, phase, opts in order:
                name = job_name(loop, phase, opts)
                r = run_job(loop, phase, opts, args, Path(tmp))
                results[name] = best_of(results.get(name), r)
                print(f"  round {rnd + 1}: {name} ({r['wall_seconds']:.0f} s, peak {r['peak']:.0f}/{r['peak_after']:.0f} GFLOP/s)",
                      flush=True)
        results["agree-new"] = run_job("agree", "new", {}, args, Path(tmp))     # outputs only: once
        print(f"  agreement on {args.agree_images} digits ({results['agree-new']['wall_seconds']:.0f} s)", flush=True)
    print("memory (peak RSS added by one gradient step, fresh processes):", flush=True)
    res["memory"] = measure_memory(args.attack_images, args)
    peaks = [v for r in results.values() for v in (r["peak"], r["peak_after"])]
    res["peak_gflops"], res["peak_range"] = max(peaks), [min(peaks), max(peaks)]
    peaks16 = [v for r in results.values() for v in (r["peak_bf16"], r["peak_bf16_after"])]
    res["peak_bf16_gflops"], res["peak_bf16_range"] = max(peaks16), [min(peaks16), max(peaks16)]
    res["seconds"] = time.time() - t_run
    summarize(res, results, flops)
    atomic_write_json(args.out, res)
    atomic_write_bytes(args.out.with_suffix(".md"), markdown(res).encode())
    print(f"wrote {args.out} ({res['seconds'] / 60:.1f} min)")


def differing(a, b) -> int:
    return sum(x != y for x, y in zip(a, b))


def _with_peaks(f: dict, name: str, peak16: float) -> dict:
    """A bf16 row also as a fraction of the bf16 matmul peak (its own ceiling)."""
    if "bf16" in name:
        f["fraction_of_bf16_peak"] = f["gflops"] / peak16
    return f


def gradient_agreement(g: torch.Tensor, ref: torch.Tensor) -> dict:
    """How far gradient g is from ref: cosine, fraction of signs equal (what an L∞ attack steps
    along) and relative L2 error."""
    return {"cosine": float(torch.nn.functional.cosine_similarity(g.flatten(), ref.flatten(), dim=0)),
            "sign_agreement": float((g.sign() == ref.sign()).float().mean()),
            "relative_l2": float((g - ref).norm() / ref.norm())}


def summarize(res, R, flops) -> None:
    """The figures of each loop (GFLOP/s, fraction of the peak, ratio to today) and the output
    comparisons, into res."""
    peak, peak16 = res["peak_gflops"], res["peak_bf16_gflops"]
    fig: dict = {"certify": {}, "generate": {}, "pgd": {}, "train": {}}
    gf = {k: v / 1e9 for k, v in flops.items()}
    ct = R["certify-today"]["1000"]["per_s"]
    cert_jobs = ("certify-today", "certify-new", "certify-new-compiled", "certify-new-bf16", "certify-new-bf16-compiled",
                 "reference-today", "reference-new")
    for name in cert_jobs:
        for b, v in R[name].items():
            if isinstance(v, dict) and "per_s" in v:
                key = f"{name.replace('certify-', '')}-{b}"
                fig["certify"][key] = _with_peaks(figures(gf["certify"], v["per_s"], peak, ct), key, peak16)
    ref = {b: v["per_s"] for b, v in R["reference-today"].items() if isinstance(v, dict) and "per_s" in v}
    ref_b = max(ref, key=ref.get)
    for label, keep in (("certify_best", lambda k: "bf16" not in k), ("certify_best_bf16", lambda k: "bf16" in k)):
        ours = {k: v["per_s"] for k, v in fig["certify"].items() if k.startswith("new") and keep(k)}
        best = max(ours, key=ours.get)
        fig[label] = {"config": best, "vs_today": ours[best] / ct, "vs_reference_best": ours[best] / ref[ref_b],
                      "reference_best_batch": int(ref_b), "fraction_of_peak": fig["certify"][best]["fraction_of_peak"]}
    new_rows = {b: v["rows"] for b, v in R["certify-new"].items() if isinstance(v, dict) and "rows" in v}
    res["certificates_differing"] = {
        "today_vs_new_batch250": differing(R["certify-today"]["250"]["rows"], new_rows["250"]),
        "today_vs_new_batch1000": differing(R["certify-today"]["1000"]["rows"], new_rows["1000"]),
        "new_batch250_vs_1000": differing(new_rows["250"], new_rows["1000"]),
        "reference_vs_new": {b: differing(R["reference-today"][b]["rows"], new_rows[b]) for b in new_rows if b in R["reference-today"]},
        "compiled_vs_eager_batch250": differing(R["certify-new-compiled"]["250"]["rows"], new_rows["250"]),
        "bf16_vs_fp32_batch250": differing(R["certify-new-bf16"]["250"]["rows"], new_rows["250"]),
        "bf16_compiled_vs_fp32_batch250": differing(R["certify-new-bf16-compiled"]["250"]["rows"], new_rows["250"]),
        "images": len(new_rows["250"]),
    }
    A = R["agree-new"]
    correct = lambda rows: sum(c == y for (c, _), y in zip(rows, A["labels"]))          # noqa: E731
    res["agreement_digits"] = {
        "images": len(A["labels"]), "batch": 250,
        "correct": {k: correct(A[k]) for k in ("fp32", "bf16", "fp32-compiled", "bf16-compiled")},
        "differing_from_fp32": {k: differing(A[k], A["fp32"]) for k in ("bf16", "fp32-compiled", "bf16-compiled")},
        "class_differing_from_fp32": {k: sum(a[0] != b[0] for a, b in zip(A[k], A["fp32"]))
                                      for k in ("bf16", "fp32-compiled", "bf16-compiled")},
        "max_radius_diff_from_fp32": {k: max(abs(a[1] - b[1]) for a, b in zip(A[k], A["fp32"]))
                                      for k in ("bf16", "fp32-compiled", "bf16-compiled")},
        "mean_radius": {k: sum(r for _, r in A[k]) / len(A[k]) for k in ("fp32", "bf16", "fp32-compiled", "bf16-compiled")},
    }
    res["compile_seconds"] = {"certify": R["certify-new-compiled"].get("compile_seconds-250"),
                              "certify_bf16": R["certify-new-bf16-compiled"].get("compile_seconds-250"),
                              "generate_first_run": R["generate-new-compiled"]["first_run_seconds"],
                              "generate_bf16_first_run": R["generate-new-bf16-compiled"]["first_run_seconds"],
                              "train_first_run": R["train-new-compiled"]["first_run_seconds"],
                              "train_bf16_first_run": R["train-new-bf16-compiled"]["first_run_seconds"]}
    gt = R["generate-today"]["per_s"]
    gen_jobs = ("generate-today", "generate-new", "generate-new-compiled", "generate-new-bf16", "generate-new-bf16-compiled")
    for name in gen_jobs:
        key = name.replace("generate-", "")
        fig["generate"][key] = _with_peaks(figures(gf["generate"], R[name]["per_s"], peak, gt), key, peak16)
    res["generate_max_abs_diff"] = float((R["generate-new"]["samples"] - R["generate-today"]["samples"]).abs().max())
    res["generate_vs_fp32_eager"] = {
        name.replace("generate-new-", ""): {"max_abs_diff": float((R[name]["samples"] - R["generate-new"]["samples"]).abs().max()),
                                            "mean_abs_diff": float((R[name]["samples"] - R["generate-new"]["samples"]).abs().mean())}
        for name in gen_jobs[2:]}
    for steps in (5, 20):
        t = R["pgd-today"][f"{steps}-1"]
        fig["pgd"][f"{steps}-today"] = figures(gf[f"pgd-{steps}"], t, peak, t)
        for k in (1, 4, 8):
            fig["pgd"][f"{steps}-new-eot_batch{k}"] = figures(gf[f"pgd-{steps}"], R["pgd-new"][f"{steps}-{k}"], peak, t)
        for name in ("pgd-new-compiled", "pgd-new-bf16", "pgd-new-bf16-compiled"):
            key = f"{steps}-{name.replace('pgd-', '')}-eot_batch8"
            fig["pgd"][key] = _with_peaks(figures(gf[f"pgd-{steps}"], R[name][f"{steps}-8"], peak, t), key, peak16)
    agree = {n.replace("pgd-new-", ""): gradient_agreement(R[n]["purifier_gradient"], R["pgd-new"]["purifier_gradient"])
             for n in ("pgd-new-compiled", "pgd-new-bf16", "pgd-new-bf16-compiled")}
    res["pgd_gradient"] = {"eot_batch8_vs_1_max_abs_diff": R["pgd-new"]["gradient_max_abs_diff"],
                           "max_abs": R["pgd-new"]["gradient_max_abs"],
                           "purifier_5_steps_cosine_to_fp32": {k: v["cosine"] for k, v in agree.items()},
                           "purifier_5_steps_sign_agreement_with_fp32": {k: v["sign_agreement"] for k, v in agree.items()}}
    tt = R["train-today"]["per_s"]
    train_jobs = ("train-today", "train-new", "train-new-compiled", "train-new-bf16", "train-new-bf16-compiled")
    for name in train_jobs:
        key = name.replace("train-", "")
        fig["train"][key] = _with_peaks(figures(gf["train"], R[name]["per_s"], peak, tt), key, peak16)
    lt = R["train-today"]["losses"]
    res["train_losses"] = {"today": lt, "new_identical": R["train-new"]["losses"] == lt,
                           **{f"{name.replace('train-new-', '')}_max_abs_diff": max(abs(a - b) for a, b in zip(R[name]["losses"], lt))
                              for name in train_jobs[2:]}}
    m = res["memory"]
    fig["memory"] = {f"{k}-100_over_1": m[f"{k}-100"]["added_mib"] / max(m[f"{k}-1"]["added_mib"], 1e-9)
                     for k in ("stored", "checkpoint")}
    res["figures"] = fig
    print(f"\nfigures (fp32 peak {peak:.1f} GFLOP/s, the best of {2 * len(R)} measurements, range "
          f"{res['peak_range'][0]:.0f}–{res['peak_range'][1]:.0f}; bf16 peak {peak16:.1f}):")
    for loop in ("certify", "generate", "pgd", "train"):
        for k, v in fig[loop].items():
            show(f"{loop} {k}", v, "/s")
    for label in ("certify_best", "certify_best_bf16"):
        cb = fig[label]
        print(f"  {label} ({cb['config']}): {cb['vs_today']:.2f}× today, {cb['vs_reference_best']:.2f}× the reference "
              f"at its best batch {cb['reference_best_batch']}")
    print(f"  certificates differing: {res['certificates_differing']}")
    print(f"  agreement on digits: {res['agreement_digits']}")
    print(f"  generated samples, new vs today: max |Δ| {res['generate_max_abs_diff']:.2e}; vs fp32 eager: "
          f"{res['generate_vs_fp32_eager']}")
    print(f"  PGD gradient: {res['pgd_gradient']}")
    print(f"  training losses: {({k: v for k, v in res['train_losses'].items() if k != 'today'})}")
    print(f"  memory, 100 solver steps / 1 step: stored {fig['memory']['stored-100_over_1']:.1f}×, "
          f"checkpointed {fig['memory']['checkpoint-100_over_1']:.2f}×")


def markdown(res) -> str:
    fig = res["figures"]
    lines = [f"# Throughput (bench/throughput.py), fp32 matmul peak {res['peak_gflops']:.1f} GFLOP/s, bf16 matmul peak "
             f"{res['peak_bf16_gflops']:.1f} GFLOP/s, {res['threads']} threads, torch {res['torch']}\n",
             "| loop | configuration | per s | GFLOP/s | % of fp32 peak | % of bf16 peak | × today |",
             "|---|---|---|---|---|---|---|"]
    for loop in ("certify", "generate", "pgd", "train"):
        for k, v in fig[loop].items():
            p16 = f"{100 * v['fraction_of_bf16_peak']:.1f}" if "fraction_of_bf16_peak" in v else ""
            lines.append(f"| {loop} | {k} | {v['per_s']:.1f} | {v['gflops']:.1f} | {100 * v['fraction_of_peak']:.1f} | {p16} | "
                         f"{v.get('vs_today', 1):.2f} |")
    lines.append("\n| memory (MiB added by one gradient step) | 1 | 5 | 20 | 100 solver steps |\n|---|---|---|---|---|")
    for k in ("stored", "checkpoint"):
        lines.append(f"| {k} | " + " | ".join(f"{res['memory'][f'{k}-{s}']['added_mib']:.0f}" for s in (1, 5, 20, 100)) + " |")
    a = res["agreement_digits"]
    lines.append(f"\nCertificates of {a['images']} digits test images (batch {a['batch']}): correct {a['correct']}; "
                 f"differing from fp32 eager {a['differing_from_fp32']} (class {a['class_differing_from_fp32']}); "
                 f"max radius difference {a['max_radius_diff_from_fp32']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
