"""Bench: what memorisation depends on (issue 21) — extraction and membership inference against
training-set size, training length and duplication, on the embedded digits and on MNIST.

For each data set (digits: the embedded set's train split, 1,438 images; MNIST: the 60,000 of
``mnist-train.npz``) and each arm:

* **size**: a class-conditional EDM model (``--size``, default tiny) trained on n ∈ {100, 300,
  1,000, all} training images, at two training lengths: the short model is the long run's own
  checkpoint at ``--steps-short`` (same seed and constant learning rate, so it is exactly the model a
  short run would give), so each pair costs one run;
* **duplication**: n = ``--dup-n`` images of which ``--dup-k`` occur ×10 and ``--dup-k`` more ×100
  (Carlini et al. §7), trained ``--steps-long``.

Every model is then audited against baselines measured in the same run:

* extraction: ``--n-generate`` samples (Heun, ``--sample-steps``) through Carlini et al.'s
  criterion (ℓ < 1/3, α = 0.5, n = 50; trustdiff.audit.extract) → distinct training images
  extracted, and the held-out real images (non-members) through the very same criterion — what a
  model that copies nothing would score;
* membership: members (≤ ``--max-members`` distinct training images) against non-members (≤
  ``--max-nonmembers`` held-out images: the test split and the training images not chosen), the
  loss attack (Matsumoto et al. 2023) and PIA (Kong et al. 2024) at ``--sigmas``: AUC (DeLong
  interval), TPR at FPR 1% and 0.1% (Clopper–Pearson), against random guessing (AUC ½, TPR = FPR)
  and PIA against the loss attack. The duplication arm also gives each group's TPR (×1, ×10, ×100)
  at the 1%-FPR threshold.

Stages are cached under ``--out``/cache (subsets, training runs with checkpoints, samples, per-model
results as JSON) and skipped when present, so a killed run continues; ``wall_seconds_all_runs``
adds the earlier runs' time. Writes ``--json`` (default bench/results/audit_digits.json), a
markdown table beside it and plots under ``--out``.

    python bench/audit_digits.py                 # full: planned ≈ 75–90 min on 2 CPU cores (see the JSON's plan)
    python bench/audit_digits.py --quick         # a few minutes: the pipeline end to end, tiny sizes
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from trustdiff.audit import (attack_scores, extraction_report, membership_report, prepare_training_set)
from trustdiff.data import ImageSet, load
from trustdiff.diffusion.model import generate, load_model
from trustdiff.persist import atomic_write_bytes, atomic_write_json
from trustdiff.train import TrainConfig
from trustdiff.train.diffusion import DiffusionJob, train_diffusion, with_steps

HERE = Path(__file__).resolve().parent
MNIST = HERE.parent.parent / "shared" / "data" / "mnist-train.npz"
MNIST_TEST = HERE.parent.parent / "shared" / "data" / "mnist-test.npz"

QUICK = dict(sizes="100,all", steps_short=60, steps_long=150, dup_n=300, dup_k=3, n_generate=64, sample_steps=6,
             max_members=200, max_nonmembers=400, sigmas="0.1,0.5", repeats=1)


def args_parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = ap.add_argument
    a("--datasets", default="digits,mnist")
    a("--mnist", type=Path, default=MNIST, help="MNIST training images (.npz)")
    a("--mnist-test", type=Path, default=MNIST_TEST, help="MNIST test images: non-members of the 'all' arm")
    a("--resolution", type=int, default=16, help="every image is resized to this (digits are 8×8, MNIST 28×28)")
    a("--size", default="tiny", help="network size (trustdiff.nets); tiny: 0.16M parameters")
    a("--sizes", default="100,300,1000,all", help="training-set sizes of the size arm ('all': the whole train split)")
    a("--steps-short", type=int, default=500)
    a("--steps-long", type=int, default=2000)
    a("--batch", type=int, default=64)
    a("--lr", type=float, default=5e-3)
    a("--ema-halflife-kimg", type=float, default=2.0)
    a("--dup-n", type=int, default=1000, help="distinct images of the duplication arm")
    a("--dup-k", type=int, default=5, help="images repeated ×10, and as many more ×100")
    a("--n-generate", type=int, default=1000)
    a("--sample-steps", type=int, default=18, help="Heun levels (NFE 2·steps − 1)")
    a("--guidance", type=float, default=1.0)
    a("--max-members", type=int, default=1000)
    a("--max-nonmembers", type=int, default=2000)
    a("--sigmas", default="0.05,0.1,0.2,0.5", help="membership noise levels (model units)")
    a("--repeats", type=int, default=2)
    a("--threads", type=int, default=2)
    a("--seed", type=int, default=0)
    a("--quick", action="store_true", help="a few minutes: tiny sizes; proves the pipeline, not the claims")
    a("--out", type=Path, default=None, help="default: bench/results/audit_digits[_quick]")
    a("--json", type=Path, default=None, help="default: bench/results/audit_digits[_quick].json")
    return ap


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---- data ------------------------------------------------------------------------------------------

def pools(args, name: str) -> tuple[ImageSet, ImageSet]:
    """(train pool, test pool) of a data set, at --resolution."""
    r = args.resolution
    if name == "digits":
        return load("digits", resolution=r, split="train", seed=args.seed), load("digits", resolution=r, split="test", seed=args.seed)
    if name == "mnist":
        test = load(str(args.mnist_test), resolution=r) if args.mnist_test and Path(args.mnist_test).is_file() else None
        return load(str(args.mnist), resolution=r), test
    raise SystemExit(f"unknown data set {name!r} (expected digits or mnist)")


def subset(train: ImageSet, test: ImageSet | None, n: int, copies: list[tuple[int, int]], seed: int, max_non: int):
    """(training rows ImageSet, copies per row, member indices, non-member ImageSet). ``copies``:
    [(k, times), …] — the first k chosen images ×times, the next k ×times', …"""
    perm = np.random.default_rng(seed).permutation(len(train.images))
    mem = perm[:n]
    rows, cps, at = [], [], 0
    for k, times in copies:
        rows.append(np.repeat(mem[at: at + k], times))
        cps.append(np.full(k * times, times))
        at += k
    rows.append(mem[at:])
    cps.append(np.ones(len(mem) - at, int))
    rows, cps = np.concatenate(rows), np.concatenate(cps)
    non_imgs = [train.images[perm[n:]]]
    non_lab = [train.labels[perm[n:]]]
    if test is not None:
        non_imgs.insert(0, test.images)
        non_lab.insert(0, test.labels)
    ni, nl = np.concatenate(non_imgs), np.concatenate(non_lab)
    if len(ni) > max_non:
        pick = np.random.default_rng(seed + 1).permutation(len(ni))[:max_non]
        ni, nl = ni[pick], nl[pick]
    mk = lambda im, lab, tag: ImageSet(im, lab, train.num_classes, f"{train.name}-{tag}", train.source)  # noqa: E731
    return mk(train.images[rows], train.labels[rows], "rows"), cps, mem, mk(ni, nl, "nonmembers")


def save_npz(path: Path, s: ImageSet) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=s.images, labels=s.labels)
    atomic_write_bytes(path, buf.getvalue())


# ---- one arm: train, then audit each length ----------------------------------------------------------

def train_arm(args, folder: Path, data_path: Path, lengths: list[int]) -> dict[int, Path]:
    """Train to each length in turn (resuming the same run), exporting a model folder per length:
    {steps: model folder}; lengths already exported are skipped."""
    job = DiffusionJob(data=str(data_path), resolution=args.resolution, size=args.size, conditional=True,
                       train=TrainConfig(steps=lengths[0], batch_size=args.batch, lr=args.lr,
                                         warmup_steps=min(100, max(1, lengths[0] // 10)),
                                         ema_halflife_kimg=args.ema_halflife_kimg, checkpoint_every=500,
                                         log_every=100, seed=args.seed, progress=False))
    out, run = {}, folder / "train"
    for steps in lengths:
        dest = folder / f"model-{steps}"
        out[steps] = dest
        if (dest / "trustdiff.json").is_file():
            continue
        t = time.time()
        model = train_diffusion(with_steps(job, steps), run, resume=(run / "checkpoints").is_dir())
        import shutil

        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(model, dest)
        (folder / f"train-{steps}.seconds").write_text(f"{time.time() - t:.3f}")
    return out


def audit_model(args, model_dir: Path, rows: ImageSet, copies: np.ndarray, non: ImageSet, cache: Path) -> dict:
    """Extraction and membership of one model, cached as JSON beside it."""
    path = cache / f"audit-{model_dir.name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    den, spec = load_model(model_dir)
    den.eval()
    res = {"model": str(model_dir)}
    # extraction: samples (cached), then the criterion on them and on the held-out images
    sp = cache / f"samples-{model_dir.name}.npz"
    t = time.time()
    if sp.is_file():
        gen = torch.from_numpy(np.load(sp)["x"])
    else:
        gen, _ = generate(den, spec, args.n_generate, seed=10_000, steps=args.sample_steps, guidance=args.guidance,
                          batch=256)
        buf = io.BytesIO()
        np.savez(buf, x=gen.numpy())
        atomic_write_bytes(sp, buf.getvalue())
    res["generate_seconds"] = time.time() - t
    tx, ty = rows.tensors()
    ts = prepare_training_set(tx, ty)
    nx, ny = non.tensors()
    t = time.time()
    rep, _, _ = extraction_report(gen, ts, nx, num_classes=rows.num_classes)
    res["search_seconds"] = time.time() - t
    res["extraction"] = rep
    # membership: distinct members (the duplicated ones always among them) vs held-out images
    cp = torch.from_numpy(copies)[ts.first]                     # copies of each distinct member
    mx, my = tx[ts.first], ty[ts.first]
    order = torch.argsort(-cp, stable=True)                      # duplicated first, then the order of the set
    keep = order[: args.max_members]
    mx, my, cp = mx[keep], my[keep], cp[keep]
    sig = floats(args.sigmas)
    t = time.time()
    sm, sn = {}, {}
    with torch.no_grad():
        for a in ("loss", "pia"):
            kw = dict(seed=args.seed, repeats=args.repeats, batch=256, sigma0=float(spec.sigma_min))
            sm[a] = attack_scores(a, den, mx, sig, cond=my, **kw)
            sn[a] = attack_scores(a, den, nx, sig, cond=ny, **kw)
    res["membership_seconds"] = time.time() - t
    mrep = membership_report(sm, sn, sig, seed=args.seed)
    if int(cp.max()) > 1:                                        # each duplication group's TPR at 1% FPR
        for a in ("loss", "pia"):
            b = mrep["attacks"][a]["best"]
            thr = b["tpr_at_fpr"]["0.01"]["threshold"]
            j = sig.index(b["sigma"])
            s = sm[a][:, j]
            b["tpr_at_1pct_fpr_by_copies"] = {str(int(c)): {"tpr": float((s[cp == c] > thr).double().mean()),
                                                            "n": int((cp == c).sum())} for c in torch.unique(cp)}
    res["membership"] = mrep
    res["members_scored"], res["nonmembers_scored"] = int(len(mx)), int(len(nx))
    atomic_write_json(path, res)
    return res


# ---- reporting ----------------------------------------------------------------------------------------

def fmt_p(p: dict | None) -> str:
    if not p:
        return "–"
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] ({p['k']}/{p['n']})"


def row_summary(r: dict) -> dict:
    e, m = r["audit"]["extraction"], r["audit"]["membership"]["attacks"]
    g, h = e["generated"]["normalized"], e["heldout"]["normalized"]
    out = {"dataset": r["dataset"], "arm": r["arm"], "members": r["members"], "training_rows": r["rows"],
           "steps": r["steps"], "extracted_distinct": g["distinct_training_images"],
           "extracted_generations": g["flagged"], "heldout_flagged": h["flagged"],
           "by_copies": g.get("by_copies")}
    for a in ("loss", "pia"):
        b = m[a]["best"]
        out[a] = {"auc": b["auc"], "auc_interval": b["auc_interval"], "sigma": b["sigma"],
                  "tpr_1pct": b["tpr_at_fpr"]["0.01"]["tpr"], "tpr_01pct": b["tpr_at_fpr"]["0.001"]["tpr"],
                  "tpr_01pct_below_resolution": b["tpr_at_fpr"]["0.001"]["below_resolution"],
                  "selected_sigma_auc": m[a].get("selected", {}).get("auc"),
                  "by_copies": b.get("tpr_at_1pct_fpr_by_copies")}
    return out


def markdown(rows: list[dict]) -> str:
    head = ("| data | arm | distinct train imgs (rows) | steps | extracted: distinct (generations flagged) | held-out flagged "
            "(baseline) | loss AUC [95%] | loss TPR@1% | loss TPR@0.1% | PIA AUC [95%] | PIA TPR@1% | PIA TPR@0.1% |")
    lines = [head, "|" + "---|" * 12]
    for s in rows:
        g, h = s["extracted_generations"], s["heldout_flagged"]
        cells = [s["dataset"], s["arm"], f"{s['members']} ({s['training_rows']})", str(s["steps"]),
                 f"{s['extracted_distinct']} ({g['k']}/{g['n']})", f"{h['k']}/{h['n']}"]
        for a in ("loss", "pia"):
            x = s[a]
            cells += [f"{x['auc']:.3f} [{x['auc_interval'][0]:.3f}, {x['auc_interval'][1]:.3f}]",
                      f"{x['tpr_1pct']['value']:.3f}", f"{x['tpr_01pct']['value']:.3f}" + ("*" if x["tpr_01pct_below_resolution"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Random guessing: AUC 0.5, TPR@1% = 0.01, TPR@0.1% = 0.001. * fewer than 1,000 non-members: no false "
              "positive allowed at 0.1%. AUC and TPR at the σ of highest AUC (post hoc, as the papers report; the JSON also "
              "has the σ chosen on half the images, measured on the other half)."]
    dup = [s for s in rows if s["arm"] == "duplication"]
    if dup:
        lines += ["", "| data | steps | copies | extracted / distinct images | loss TPR@1%FPR | PIA TPR@1%FPR |", "|---|---|---|---|---|---|"]
        for s in dup:
            for c, v in (s["by_copies"] or {}).items():
                lt = (s["loss"]["by_copies"] or {}).get(c, {})
                pt = (s["pia"]["by_copies"] or {}).get(c, {})
                lines.append(f"| {s['dataset']} | {s['steps']} | ×{c} | {v['extracted']}/{v['of']} | "
                             f"{lt.get('tpr', float('nan')):.2f} (n={lt.get('n', 0)}) | {pt.get('tpr', float('nan')):.2f} |")
    return "\n".join(lines)


def plots(out: Path, rows: list[dict]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sets = sorted({s["dataset"] for s in rows})
    size_rows = [s for s in rows if s["arm"] == "size"]
    if size_rows:
        fig, axes = plt.subplots(2, len(sets), figsize=(4.6 * len(sets), 6.4), squeeze=False)
        for c, ds in enumerate(sets):
            rs = [s for s in size_rows if s["dataset"] == ds]
            for steps in sorted({s["steps"] for s in rs}):
                pts = sorted(((s["members"], s) for s in rs if s["steps"] == steps), key=lambda p: p[0])
                xs = [p[0] for p in pts]
                for a, mk in (("loss", "o-"), ("pia", "s--")):
                    axes[0][c].plot(xs, [p[1][a]["auc"] for p in pts], mk, ms=4, label=f"{a}, {steps} steps")
                    axes[1][c].plot(xs, [max(p[1][a]["tpr_1pct"]["value"], 1e-4) for p in pts], mk, ms=4,
                                    label=f"{a}, {steps} steps")
            axes[0][c].axhline(0.5, color="k", ls=":", lw=0.8, label="random guess")
            axes[1][c].axhline(0.01, color="k", ls=":", lw=0.8, label="random guess")
            axes[0][c].set_title(ds)
            axes[0][c].set_ylabel("membership AUC")
            axes[1][c].set_ylabel("TPR at FPR 1%")
            axes[1][c].set_yscale("log")
            for ax in (axes[0][c], axes[1][c]):
                ax.set_xscale("log")
                ax.set_xlabel("distinct training images")
                ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "membership_vs_size.png", dpi=100)
        plt.close(fig)
        written.append("membership_vs_size.png")
        fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 3.4), squeeze=False)
        for c, ds in enumerate(sets):
            rs = [s for s in size_rows if s["dataset"] == ds]
            for steps in sorted({s["steps"] for s in rs}):
                pts = sorted(((s["members"], s) for s in rs if s["steps"] == steps), key=lambda p: p[0])
                axes[0][c].plot([p[0] for p in pts], [p[1]["extracted_generations"]["value"] for p in pts], "o-", ms=4,
                                label=f"generations extracted, {steps} steps")
                axes[0][c].plot([p[0] for p in pts], [p[1]["heldout_flagged"]["value"] for p in pts], "x:", ms=5,
                                label=f"held-out real flagged (baseline), {steps} steps")
            axes[0][c].set_xscale("log")
            axes[0][c].set_xlabel("distinct training images")
            axes[0][c].set_ylabel("fraction flagged (ℓ < 1/3)")
            axes[0][c].set_title(ds)
            axes[0][c].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "extraction_vs_size.png", dpi=100)
        plt.close(fig)
        written.append("extraction_vs_size.png")
    dup = [s for s in rows if s["arm"] == "duplication" and s["by_copies"]]
    if dup:
        fig, axes = plt.subplots(1, len(dup), figsize=(4.2 * len(dup), 3.2), squeeze=False)
        for c, s in enumerate(dup):
            cs = list(s["by_copies"])
            x = np.arange(len(cs))
            ext = [s["by_copies"][k]["extracted"] / max(s["by_copies"][k]["of"], 1) for k in cs]
            lt = [(s["loss"]["by_copies"] or {}).get(k, {}).get("tpr", 0) for k in cs]
            pt = [(s["pia"]["by_copies"] or {}).get(k, {}).get("tpr", 0) for k in cs]
            axes[0][c].bar(x - 0.27, ext, 0.27, label="extracted (fraction of images)")
            axes[0][c].bar(x, lt, 0.27, label="loss TPR@1%FPR")
            axes[0][c].bar(x + 0.27, pt, 0.27, label="PIA TPR@1%FPR")
            axes[0][c].set_xticks(x, [f"×{k}" for k in cs])
            axes[0][c].set_ylim(0, 1.05)
            axes[0][c].set_title(f"{s['dataset']}, {s['steps']} steps")
            axes[0][c].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "duplication.png", dpi=100)
        plt.close(fig)
        written.append("duplication.png")
    return written


# ---- cost -------------------------------------------------------------------------------------------

def projection(args, rates: dict, full: argparse.Namespace) -> dict:
    """The full configuration's cost from this run's measured rates (seconds per training step, per
    generated image, per membership-scored image)."""
    sizes = [s for s in full.sizes.split(",") if s]
    n_sets = len([d for d in full.datasets.split(",") if d])
    models = n_sets * (len(sizes) * 2 + 1)                       # short + long per size, one duplication model
    steps = n_sets * (len(sizes) + 1) * full.steps_long          # the short model is the long run's checkpoint
    gen_scale = (2 * full.sample_steps - 1) / max(2 * args.sample_steps - 1, 1)
    mem_scale = (len(floats(full.sigmas)) * (full.repeats + 1) + 1) / max(len(floats(args.sigmas)) * (args.repeats + 1) + 1, 1)
    cost = {"train": steps * rates["train_s_per_step"],
            "generate": models * full.n_generate * rates["generate_s_per_image"] * gen_scale,
            "membership": models * (full.max_members + full.max_nonmembers) * rates["membership_s_per_image"] * mem_scale}
    return {"seconds": cost, "minutes": sum(cost.values()) / 60, "models": models, "training_steps": steps}


def main():
    ap = args_parser()
    args = ap.parse_args()
    full = ap.parse_args([])
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    tag = "audit_digits_quick" if args.quick else "audit_digits"
    out = args.out or HERE / "results" / tag
    js = args.json or HERE / "results" / f"{tag}.json"
    cache = out / "cache"                                        # bench/results/*/cache/ is git-ignored
    cache.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_all = time.time()
    prev = json.loads(js.read_text()) if js.is_file() else {}
    prev_wall = prev.get("wall_seconds_all_runs", 0.0) if prev.get("args", {}).get("out") == str(out) else 0.0
    res = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"out": str(out)},
           "threads": torch.get_num_threads(), "rows": [], "earlier_runs_seconds": prev_wall}
    lengths = sorted({args.steps_short, args.steps_long})
    totals = {"train_s": 0.0, "train_steps": 0, "gen_s": 0.0, "gen_images": 0, "mem_s": 0.0, "mem_images": 0}
    for ds in [d for d in args.datasets.split(",") if d]:
        train_pool, test_pool = pools(args, ds)
        arms = [("size", (len(train_pool.images) if s == "all" else int(s)), [], lengths) for s in args.sizes.split(",") if s]
        arms.append(("duplication", args.dup_n, [(args.dup_k, 10), (args.dup_k, 100)], [args.steps_long]))
        for arm, n, copies, lens in arms:
            n = min(n, len(train_pool.images))
            spec = dict(ds=ds, arm=arm, n=n, copies=copies, seed=args.seed, res=args.resolution, size=args.size,
                        batch=args.batch, lr=args.lr, ema=args.ema_halflife_kimg, max_non=args.max_nonmembers,
                        short=lens[0] if len(lens) > 1 else None)
            folder = cache / f"{ds}-{arm}-{n}-{key(spec)}"
            folder.mkdir(parents=True, exist_ok=True)
            rows, cps, _, non = subset(train_pool, test_pool, n, copies, args.seed, args.max_nonmembers)
            data_path = folder / "train.npz"
            if not data_path.is_file():
                save_npz(data_path, rows)
            print(f"[{ds} {arm} n={n} rows={len(rows.images)}] training to {lens} steps", flush=True)
            models = train_arm(args, folder, data_path, lens)
            spent = [float(folder.joinpath(f"train-{st}.seconds").read_text()) for st in lens
                     if folder.joinpath(f"train-{st}.seconds").is_file()]
            if len(spent) == len(lens):                          # the increments of one run to max(lens) steps
                totals["train_s"] += sum(spent)
                totals["train_steps"] += max(lens)
            for steps, model_dir in models.items():
                a = audit_model(args, model_dir, rows, cps, non, folder)
                totals["gen_s"] += a["generate_seconds"]
                totals["gen_images"] += args.n_generate
                totals["mem_s"] += a["membership_seconds"]
                totals["mem_images"] += a["members_scored"] + a["nonmembers_scored"]
                r = {"dataset": ds, "arm": arm, "members": n, "rows": len(rows.images), "steps": steps, "audit": a}
                res["rows"].append(r)
                s = row_summary(r)
                print(f"  {steps:5d} steps: extracted {s['extracted_distinct']} distinct ({fmt_p(s['extracted_generations'])}); "
                      f"held-out flagged {fmt_p(s['heldout_flagged'])}; loss AUC {s['loss']['auc']:.3f}, "
                      f"TPR@1% {s['loss']['tpr_1pct']['value']:.3f}; PIA AUC {s['pia']['auc']:.3f}, "
                      f"TPR@1% {s['pia']['tpr_1pct']['value']:.3f}", flush=True)
                res["wall_seconds_all_runs"] = prev_wall + time.time() - t_all
                atomic_write_json(js, res)
    summary = [row_summary(r) for r in res["rows"]]
    res["table"] = summary
    res["plots"] = plots(out, summary)
    md = markdown(summary)
    (js.with_suffix(".md")).write_text(md + "\n")
    rates = {"train_s_per_step": totals["train_s"] / max(totals["train_steps"], 1),
             "generate_s_per_image": totals["gen_s"] / max(totals["gen_images"], 1),
             "membership_s_per_image": totals["mem_s"] / max(totals["mem_images"], 1)}
    res["rates_this_run"] = rates
    if totals["train_steps"]:
        res["projected_full"] = projection(args, rates, full)
    res["seconds_this_run"] = time.time() - t_all
    res["wall_seconds_all_runs"] = prev_wall + time.time() - t_all
    atomic_write_json(js, res)
    print(md)
    if "projected_full" in res:
        print(f"\nfull configuration projected from this run's rates: {res['projected_full']['minutes']:.0f} min "
              f"({res['projected_full']['models']} models, {res['projected_full']['training_steps']} training steps)")
    print(f"wall time (all runs): {res['wall_seconds_all_runs'] / 60:.1f} min → {js}")


if __name__ == "__main__":
    main()
