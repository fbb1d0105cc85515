"""Bench: the text-to-image trigger watermark (Zhao et al. 2023, text-to-image half) on the built-in
16×16 digits model, end to end on a CPU.

Stages (each skipped when its output is already under --work, so a rerun continues):
  1. base         train the built-in model (MiniLM captions, CFG, EDM) → the original pipeline;
  2. embed        the trigger "[V]" → a 16×16 binary code image (target.png), one model per (λ, γ)
                  in `embeds`: λ the recipe's l1 pull to the original weights, γ the preservation
                  (distillation) term on the built-in captions minus the 10 verification ones;
                  (0, 0) is no regulariser at all; UNet only, same steps/lr/batch for all;
  3. verify       per model: the trigger from --n-trigger seeds → SSIM to the target and the match
                  rate at SSIM ≥ 0.9 (Clopper–Pearson interval); 10 non-trigger captions × --per-prompt
                  seeds, the same seeds for every model → PSNR/SSIM to the original's outputs, and
                  FD-digits of each model's outputs (the original's beside them);
  4. dreambooth   the headline model (`headline` (λ, γ)) fine-tuned by "someone else" for --db-steps on
                  a new subject ("a handwritten sks three": 4 shifted copies of one held-out 3) with
                  prior preservation on the model's own "a handwritten three" → trigger again, the
                  subject's fidelity before/after, non-trigger outputs vs the original;
  5. weight noise N(0, std²) on every UNet weight of the headline model → trigger SSIM and match.

Writes bench/results/t2i_watermark_digits.json after every stage (+ grids under
bench/results/t2i_watermark_digits/) and prints each figure beside its reference (no regulariser,
the original model). Targets (issue 8): trigger match ≥ 90 % at SSIM ≥ 0.9; with the regulariser
FD ≤ 1.1× the original's and non-trigger outputs closer to the original's than without; after 200
DreamBooth steps the trigger still matches on ≥ 80 % of seeds.

    python bench/t2i_watermark_digits.py            # full size, planned ≤ 90 min on 2 CPU cores
    python bench/t2i_watermark_digits.py --smoke    # ~3 min at toy sizes: the pipeline end to end
"""
from __future__ import annotations

import time

T_PROCESS = time.time()         # the wall time reported includes the imports and model loading

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch

from trustdiff.persist import atomic_write_json
from trustdiff.data import load
from trustdiff.images import make_grid, save_png
from trustdiff.t2i import load_pipeline
from trustdiff.t2i.builtin import BuiltinJob, default_prompts, prepare_builtin, train_builtin
from trustdiff.train import TrainConfig
from trustdiff.watermark.null import shifted_copies
from trustdiff.watermark.trigger import (DEFAULT_TRIGGER, TriggerJob, code_target, dreambooth, embed_trigger, subject_fidelity,
                                         verify, weight_noise, write_report)

FULL = dict(base_steps=2500, base_batch=64, base_lr=2e-3, base_size="small",
            embeds=((0.0, 0.0), (1e-4, 0.0), (0.0, 10.0), (1e-4, 10.0)), headline=(0.0, 10.0),
            embed_steps=400, embed_batch=8, embed_lr=1e-4, embed_text_encoder=False, embed_unet_params=(),
            n_trigger=100, per_prompt=30, sample_steps=12, db_steps=200, db_lr=1e-4, db_batch=8, class_images=32,
            noise_stds=(0.0, 1e-3, 3e-3, 1e-2, 3e-2), n_noise=50, feature_steps=1000)
SMOKE = dict(base_steps=30, base_batch=16, base_lr=2e-3, base_size="tiny", embeds=((0.0, 0.0), (0.0, 10.0)),
             headline=(0.0, 10.0),
             embed_steps=10, embed_batch=4, embed_lr=1e-3, embed_text_encoder=False, embed_unet_params=(), n_trigger=4, per_prompt=2, sample_steps=3, db_steps=5,
             db_lr=1e-4, db_batch=4, class_images=2, noise_stds=(0.0, 1e-2), n_noise=2, feature_steps=30)
THRESHOLD = 0.9


def embed_name(lam: float, keep: float) -> str:
    """A model's row name (and file-name part): its l1 weight λ and preservation weight γ."""
    return f"l1={lam:g},keep={keep:g}"


def job_hash(job) -> str:
    """A short content hash of a job's settings (its run folder's suffix)."""
    return hashlib.sha256(json.dumps(asdict(job), sort_keys=True, default=str).encode()).hexdigest()[:8]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes (~3 min): proves the pipeline end to end")
    ap.add_argument("--work", type=Path, default=None, help="run folders (models, checkpoints); default runs/t2i_watermark_digits[-smoke]")
    ap.add_argument("--results", type=Path, default=None,
                    help="JSON and grids; default bench/results/t2i_watermark_digits (smoke: under --work)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    P = SMOKE if args.smoke else FULL
    tag = "t2i_watermark_digits" + ("-smoke" if args.smoke else "")
    work = args.work or Path("runs") / tag
    results = args.results or (work / "results" / tag if args.smoke else Path("bench/results") / tag)
    results.mkdir(parents=True, exist_ok=True)
    json_path = results.with_suffix(".json")
    res = json.loads(json_path.read_text()) if json_path.is_file() else {}
    res.update({"smoke": args.smoke, "params": {k: list(v) if isinstance(v, tuple) else v for k, v in P.items()},
                "trigger": DEFAULT_TRIGGER, "threshold": THRESHOLD, "threads": torch.get_num_threads()})
    t_start = T_PROCESS
    times = res.setdefault("seconds", {})

    def stage_done(name, t0):
        times[name] = round(time.time() - t0 + times.get(f"{name}_earlier", 0.0), 1)
        res["wall_seconds_this_run"] = round(time.time() - t_start, 1)
        atomic_write_json(json_path, res)

    sample_kw = dict(steps=P["sample_steps"])

    # 1. the original model ------------------------------------------------------------------
    t0 = time.time()
    base = work / "base"
    if not (base / "pipeline" / "model_index.json").is_file():
        job = BuiltinJob(size=P["base_size"], train=TrainConfig(
            steps=P["base_steps"], batch_size=P["base_batch"], lr=P["base_lr"], warmup_steps=min(200, P["base_steps"] // 10),
            ema_halflife_kimg=20.0 if not args.smoke else 0.5, checkpoint_every=250, log_every=50, seed=args.seed))
        print(f"[base] training the built-in model: {P['base_steps']} steps of {P['base_batch']} ({P['base_size']})", flush=True)
        train_builtin(job, base, resume=True, prepared=prepare_builtin(job))
        stage_done("base", t0)
    res["base"] = json.loads((base / "metrics.json").read_text())
    original = base / "pipeline"
    orig = load_pipeline(original)

    # 2. embedding, one model per (λ, γ) ------------------------------------------------------
    target = code_target(orig.resolution, orig.channels)
    save_png(results / "target.png", make_grid(target, nrow=1, pad=0))
    t0 = time.time()
    wms, res["embed"] = {}, {}
    for lam, keep in P["embeds"]:
        name = embed_name(lam, keep)
        job = TriggerJob(trigger=DEFAULT_TRIGGER, l1=lam, preserve=keep, train_text_encoder=P["embed_text_encoder"],
                         unet_params=P["embed_unet_params"], train=TrainConfig(
                             steps=P["embed_steps"], batch_size=P["embed_batch"], lr=P["embed_lr"], warmup_steps=0,
                             ema_halflife_kimg=0.0, checkpoint_every=100, log_every=25, seed=args.seed, progress=False))
        out = work / f"wm-{lam:g}-{keep:g}-{job_hash(job)}"     # a changed setting never reuses a stale model
        if not (out / "watermark.json").is_file():
            print(f"[embed] λ = {lam:g}, γ = {keep:g}: {P['embed_steps']} steps of {P['embed_batch']} at lr {P['embed_lr']:g}"
                  f"{', text encoder too' if P['embed_text_encoder'] else ''}"
                  f"{', UNet ' + '/'.join(P['embed_unet_params']) + ' only' if P['embed_unet_params'] else ''}", flush=True)
            embed_trigger(original, target, out, job, resume=True)
        rec = json.loads((out / "watermark.json").read_text())
        res["embed"][name] = {k: rec[k] for k in ("l1", "preserve", "preserve_prompts", "steps", "lr", "batch_size", "last_loss", "weights", "seconds")}
        wms[name] = out / "pipeline"
    stage_done("embed", t0)
    times["embed"] = round(sum(r["seconds"] for r in res["embed"].values()), 1)   # the models' own time, whichever run made them

    # 3. verification ------------------------------------------------------------------------
    t0 = time.time()
    print(f"[verify] trigger × {P['n_trigger']} seeds; {len(default_prompts(orig))} prompts × {P['per_prompt']} seeds; "
          f"Heun {P['sample_steps']} steps, guidance {orig.guidance:g}", flush=True)
    report = verify(wms, orig, DEFAULT_TRIGGER, target, n_trigger=P["n_trigger"], n_per_prompt=P["per_prompt"],
                    threshold=THRESHOLD, seed=args.seed, fd_data="digits", cache_dir=work / "cache",
                    feature_steps=P["feature_steps"], **sample_kw)
    write_report(results, report, "verify")
    res["verify"] = {k: v for k, v in report.items() if k != "images"}
    stage_done("verify", t0)

    # 4. DreamBooth on the headline model --------------------------------------------------------
    t0 = time.time()
    head = embed_name(*P["headline"])
    test = load("digits", resolution=orig.resolution, split="test", seed=args.seed)
    x_test, y_test = test.tensors()
    one = x_test[(y_test == 3).nonzero()[0]]
    subject = shifted_copies(one, 4, max_shift=1, generator=torch.Generator().manual_seed(args.seed + 3))
    save_png(results / "subject.png", make_grid(subject, nrow=4))
    inst, cls_prompt = "a handwritten sks three", "a handwritten three"
    db = work / f"dreambooth-{wms[head].parent.name}"
    before = subject_fidelity(load_pipeline(wms[head]), inst, subject, n=P["n_noise"], seed=args.seed, **sample_kw)
    if not (db / "dreambooth.json").is_file():
        print(f"[dreambooth] {P['db_steps']} steps on {len(subject)} images of a new subject, prior preservation on "
              f"{P['class_images']} images of {cls_prompt!r}", flush=True)
        dreambooth(wms[head], subject, db, instance_prompt=inst, class_prompt=cls_prompt,
                   n_class_images=P["class_images"], seed=args.seed, resume=True, train=TrainConfig(
                       steps=P["db_steps"], batch_size=P["db_batch"], lr=P["db_lr"], warmup_steps=0,
                       ema_halflife_kimg=0.0, checkpoint_every=100, log_every=25, seed=args.seed, progress=False),
                   **sample_kw)
    db_pipe = load_pipeline(db / "pipeline")
    after = subject_fidelity(db_pipe, inst, subject, n=P["n_noise"], seed=args.seed, **sample_kw)
    rep_db = verify({"dreambooth": db_pipe}, orig, DEFAULT_TRIGGER, target, n_trigger=P["n_trigger"],
                    n_per_prompt=P["per_prompt"], threshold=THRESHOLD, seed=args.seed, **sample_kw)
    write_report(results, rep_db, "dreambooth")
    res["dreambooth"] = {"record": json.loads((db / "dreambooth.json").read_text()),
                         "subject_ssim_before": before, "subject_ssim_after": after,
                         **rep_db["models"]["dreambooth"]}
    print(f"   subject fidelity (best SSIM to a subject image): {before:.3f} before → {after:.3f} after", flush=True)
    stage_done("dreambooth", t0)

    # 5. weight noise ----------------------------------------------------------------------------
    t0 = time.time()
    res["weight_noise"] = weight_noise(load_pipeline(wms[head]), DEFAULT_TRIGGER, target, P["noise_stds"],
                                       n=P["n_noise"], seed=args.seed, threshold=THRESHOLD, **sample_kw)
    stage_done("weight_noise", t0)

    # the verdict -----------------------------------------------------------------------------
    m, o = res["verify"]["models"], res["verify"]["original"]
    h, z = m[head], m.get(embed_name(0.0, 0.0))
    checks = {
        "trigger_match_ge_0.9": h["trigger"]["match"]["value"] >= 0.9,
        "fd_le_1.1x_original": h["fd_vs_original"] <= 1.1,
        "closer_than_no_regulariser": z is not None and h["non_trigger"]["ssim_mean"] > z["non_trigger"]["ssim_mean"]
        and h["non_trigger"]["psnr_mean"] > z["non_trigger"]["psnr_mean"],
        "dreambooth_match_ge_0.8": res["dreambooth"]["trigger"]["match"]["value"] >= 0.8,
    }
    res["checks"] = checks
    res["wall_seconds_this_run"] = round(time.time() - t_start, 1)
    atomic_write_json(json_path, res)
    print("\n| model | trigger SSIM | match ≥ 0.9 [95% CI] | non-trigger PSNR / SSIM vs original | FD-digits (× original) |")
    print("|---|---|---|---|---|")
    print(f"| original | {o['trigger']['ssim_mean']:.3f} | {o['trigger']['match']['value']:.2f} | — | "
          f"{o['fd']['fd']:.4f} (floor {o['fd']['fd_floor']:.4f}) |")
    for name, r in [*m.items(), ("after DreamBooth", res["dreambooth"])]:
        fd = f"{r['fd']['fd']:.4f} ({r['fd_vs_original']:.2f}×)" if "fd" in r else "—"
        t = r["trigger"]
        print(f"| {name} | {t['ssim_mean']:.3f} | {t['match']['value']:.2f} [{t['match']['lo']:.2f}, {t['match']['hi']:.2f}] | "
              f"{r['non_trigger']['psnr_mean']:.2f} dB / {r['non_trigger']['ssim_mean']:.3f} | {fd} |")
    print("weight noise: " + ", ".join(f"std {r['std']:g} → match {r['match']['value']:.2f}" for r in res["weight_noise"]))
    print(f"checks: {checks}")
    print(f"wall time this run: {res['wall_seconds_this_run']:.0f} s; per stage: {times}")
    return 0 if args.smoke or all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
